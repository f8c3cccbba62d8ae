use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// Variables from a map.
struct Map(BTreeMap<&'static str, Value>);

impl Vars for Map {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.0.get(name).map(Cow::Borrowed)
    }
}

fn vars(pairs: &[(&'static str, Value)]) -> Map {
    Map(pairs.iter().cloned().collect())
}

fn eval(src: &str, input: Value) -> Result<Value, ExprError> {
    Expr::compile(src)
        .unwrap_or_else(|e| panic!("{e}"))
        .eval(&input, &())
}

fn ok(src: &str, input: Value) -> Value {
    eval(src, input).unwrap_or_else(|e| panic!("{e}"))
}

fn compile_err(src: &str) -> String {
    match Expr::compile(src) {
        Err(ExprError::Compile { expr, message }) => {
            assert_eq!(expr, src);
            message
        }
        other => panic!("expected a compile error for {src:?}, got {other:?}"),
    }
}

fn eval_err(src: &str, input: Value) -> String {
    match eval(src, input) {
        Err(ExprError::Eval { expr, message }) => {
            assert_eq!(expr, src);
            message
        }
        other => panic!("expected an evaluation error for {src:?}, got {other:?}"),
    }
}

/// Evaluates a runaway filter with the default limits: it must fail, and soon (the default
/// limits have no time budget: the million steps take up to a few seconds in an unoptimised
/// build on a loaded machine).
fn runaway(src: &str, expected: &str) -> String {
    let start = Instant::now();
    let message = eval_err(src, json!(null));
    let took = start.elapsed();
    println!("{src}: {message} ({took:?})");
    assert!(message.contains(expected), "{src}: {message}");
    assert!(took < Duration::from_secs(10), "{src} took {took:?}");
    message
}

#[test]
fn expr_arithmetic() {
    assert_eq!(ok("1 + 2 * 3", json!(null)), json!(7));
    assert_eq!(ok(".a + .b", json!({"a": 1, "b": 2.5})), json!(3.5));
    assert_eq!(ok(".a / 2", json!({"a": 4})), json!(2));
    assert_eq!(
        ok(".a - 1", json!({"a": 9007199254740993i64})),
        json!(9007199254740992i64)
    );
    assert_eq!(ok("10 % 3, 1", json!(null)), json!(1));
    assert_eq!(ok("1 / 0", json!(null)), json!(null));
    assert_eq!(ok("[.[] * 2]", json!([1, 2])), json!([2, 4]));
    assert_eq!(ok(r#""ab" * 3"#, json!(null)), json!("ababab"));
    assert_eq!(
        ok(r#"{a: 1} * {b: 2}"#, json!(null)),
        json!({"a": 1, "b": 2})
    );
    assert_eq!(ok(".a *= 3", json!({"a": 2})), json!({"a": 6}));
    assert_eq!(ok("(1, 2) * (10, 20)", json!(null)), json!(10));
    let all = Expr::compile("(1, 2) * (10, 20)")
        .unwrap()
        .eval_all(&json!(null), &())
        .unwrap();
    assert_eq!(all, [json!(10), json!(20), json!(20), json!(40)]);
    assert_eq!(ok("1.5", json!(null)), json!(1.5));
    assert_eq!(ok("1e3", json!(null)), json!(1000));
    assert_eq!(ok("100000000000000000000", json!(null)), json!(1e20));
    assert_eq!(
        ok(".", json!(18446744073709551615u64)),
        json!(18446744073709551615u64)
    );
}

#[test]
fn expr_string_interpolation() {
    let input = json!({"a": "world", "b": 42});
    assert_eq!(
        ok(r#""Hello \(.a) \(.b)!""#, input),
        json!("Hello world 42!")
    );
    assert_eq!(ok(r#""x\(.)""#, json!({"k": [1]})), json!(r#"x{"k":[1]}"#));
}

#[test]
fn expr_object_construction_and_variables() {
    let e = Expr::compile("{ ids: [ $input, .id ] }").unwrap();
    assert_eq!(e.variables().collect::<Vec<_>>(), ["input"]);
    let v = vars(&[("input", json!("in"))]);
    assert_eq!(
        e.eval(&json!({"id": 7}), &v).unwrap(),
        json!({"ids": ["in", 7]})
    );
    // absent variable → null
    assert_eq!(
        e.eval(&json!({"id": 7}), &()).unwrap(),
        json!({"ids": [null, 7]})
    );
}

#[test]
fn expr_variables() {
    let v = vars(&[
        ("context", json!({"user": {"name": "ann"}, "n": 2})),
        ("color", json!("red")),
        ("a", json!(1)),
        ("b", json!(2)),
    ]);
    let e = |src: &str, input: Value| Expr::compile(src).unwrap().eval(&input, &v).unwrap();
    assert_eq!(e("$context.user.name", json!(null)), json!("ann"));
    assert_eq!(
        e(".colors + [$color]", json!({"colors": ["blue"]})),
        json!(["blue", "red"])
    );
    assert_eq!(e("[$a, $b, $a - $b]", json!(null)), json!([1, 2, -1]));
    assert_eq!(e("[$b, $a]", json!(null)), json!([2, 1]));
    assert_eq!(
        e("{$a, $color}", json!(null)),
        json!({"a": 1, "color": "red"})
    );
    assert_eq!(e("$missing", json!(null)), json!(null));
    // a local binding shadows the global
    assert_eq!(e("3 as $a | $a + $b", json!(null)), json!(5));
    // `$x` inside string literals is not a variable
    let s = Expr::compile(r#""costs $5 \($a)""#).unwrap();
    assert_eq!(s.variables().collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.eval(&json!(null), &v).unwrap(), json!("costs $5 1"));
    // variables inside definitions, reduce, patterns
    assert_eq!(e("def f: . + $a; 1 | f", json!(null)), json!(2));
    assert_eq!(
        e("reduce .[] as $x ($b; . + $x)", json!([1, 2, 3])),
        json!(8)
    );
    assert_eq!(
        e(". as [$p, {q: $q}] | [$p, $q, $a]", json!([5, {"q": 6}])),
        json!([5, 6, 1])
    );
}

#[test]
fn expr_builtins() {
    assert_eq!(ok("length", json!([1, 2, 3])), json!(3));
    assert_eq!(ok(".s | length", json!({"s": "héllo"})), json!(5));
    assert_eq!(ok("map(select(. > 1))", json!([1, 2, 3])), json!([2, 3]));
    assert_eq!(
        ok(
            "[.[] | select(.ok) | .id]",
            json!([{"ok": true, "id": 1}, {"ok": false, "id": 2}])
        ),
        json!([1])
    );
    assert_eq!(ok("@base64", json!("hello")), json!("aGVsbG8="));
    assert_eq!(ok("@base64d", json!("aGVsbG8=")), json!("hello"));
    assert_eq!(ok(r#"@base64 "x\(.)""#, json!("hi")), json!("xaGk="));
    assert_eq!(
        ok("tojson", json!({"a": [1, "x"]})),
        json!(r#"{"a":[1,"x"]}"#)
    );
    assert_eq!(ok("fromjson", json!(r#"{"a":1}"#)), json!({"a": 1}));
    assert_eq!(ok("keys", json!({"b": 1, "a": 2})), json!(["a", "b"]));
    assert_eq!(
        ok("to_entries | from_entries", json!({"a": 1})),
        json!({"a": 1})
    );
    assert_eq!(ok("[paths]", json!({"a": [1]})), json!([["a"], ["a", 0]]));
    assert_eq!(
        ok("[.. | numbers]", json!({"a": [1, {"b": 2}]})),
        json!([1, 2])
    );
    assert_eq!(
        ok(
            "walk(if type == \"number\" then . + 1 else . end)",
            json!([1, [2]])
        ),
        json!([2, [3]])
    );
    assert_eq!(ok("flatten", json!([1, [2, [3]]])), json!([1, 2, 3]));
    assert_eq!(ok("[range(5)]", json!(null)), json!([0, 1, 2, 3, 4]));
    assert_eq!(ok("[range(0; 10; 3)]", json!(null)), json!([0, 3, 6, 9]));
    assert_eq!(ok("[range(5; 0; -2)]", json!(null)), json!([5, 3, 1]));
    assert_eq!(
        ok("[range(0; 1; 0.25)]", json!(null)),
        json!([0, 0.25, 0.5, 0.75])
    );
    assert_eq!(ok("[limit(3; repeat(1))]", json!(null)), json!([1, 1, 1]));
    assert_eq!(ok("until(. > 100; . * 2)", json!(1)), json!(128));
    assert_eq!(ok("[while(. < 10; . + 3)]", json!(1)), json!([1, 4, 7]));
    assert_eq!(
        ok("[recurse(if . < 3 then . + 1 else empty end)]", json!(0)),
        json!([0, 1, 2, 3])
    );
    assert_eq!(ok("add", json!([1, 2, 3])), json!(6));
    assert_eq!(ok("join(\",\")", json!(["a", "b"])), json!("a,b"));
    assert_eq!(ok("test(\"^a.c$\")", json!("abc")), json!(true));
    assert_eq!(ok("sub(\"b\"; \"X\")", json!("abc")), json!("aXc"));
    assert_eq!(ok("ascii_upcase", json!("abc")), json!("ABC"));
    assert_eq!(ok("todate", json!(0)), json!("1970-01-01T00:00:00Z"));
    assert_eq!(
        ok("\"2015-03-05T23:51:47Z\" | fromdate", json!(null)),
        json!(1425599507)
    );
    assert_eq!(
        ok("getpath([\"a\", \"b\"])", json!({"a": {"b": 5}})),
        json!(5)
    );
    assert_eq!(ok("del(.a)", json!({"a": 1, "b": 2})), json!({"b": 2}));
    assert_eq!(ok(".a |= . + 1", json!({"a": 1})), json!({"a": 2}));
    assert_eq!(ok("path(..)", json!([1])), json!([]));
    assert_eq!(
        ok("[paths(type == \"number\")]", json!([1, [2]])),
        json!([[0], [1, 0]])
    );
    assert_eq!(ok("tostring", json!([1])), json!("[1]"));
    assert_eq!(ok("try error(\"x\") catch .", json!(null)), json!("x"));
    assert_eq!(ok("[.[] | tonumber? ]", json!(["1", "x"])), json!([1]));
    assert_eq!(ok("first(range(10; 20))", json!(null)), json!(10));
    assert_eq!(
        ok("[combinations]", json!([[1, 2], [3]])),
        json!([[1, 3], [2, 3]])
    );
    assert_eq!(
        ok(
            "def fac: if . <= 1 then 1 else . * (. - 1 | fac) end; 10 | fac",
            json!(null)
        ),
        json!(3628800)
    );
    assert_eq!(ok("label $out | 1, break $out, 2", json!(null)), json!(1));
    assert_eq!(ok("empty", json!(1)), json!(null));
    // paths and updates through ticked definitions and folds
    assert_eq!(
        ok("[path(recurse(.[]?))]", json!([[1]])),
        json!([[], [0], [0, 0]])
    );
    assert_eq!(ok("def f: .a; f |= 5", json!({"a": 1})), json!({"a": 5}));
    assert_eq!(ok("path(def f: .a; f)", json!(null)), json!(["a"]));
    assert_eq!(
        ok("delpaths([[\"a\"]])", json!({"a": 1, "b": 2})),
        json!({"b": 2})
    );
    assert_eq!(
        ok("(.. | numbers) |= . + 1", json!([1, [2]])),
        json!([2, [3]])
    );
    assert_eq!(
        ok("del(.. | nulls)", json!([1, null, [null, 2]])),
        json!([1, [2]])
    );
    assert_eq!(
        ok("(recurse(.[]?) | numbers) |= . * 10", json!([1, [2]])),
        json!([10, [20]])
    );
    assert_eq!(ok(".[] *= 2", json!([1, 2])), json!([2, 4]));
    let all = Expr::compile(".a *= (2, 3)")
        .unwrap()
        .eval_all(&json!({"a": 1}), &())
        .unwrap();
    assert_eq!(all, [json!({"a": 2}), json!({"a": 3})]);
    assert_eq!(
        ok("[foreach (1, 2, 3) as $x (0; . + $x)]", json!(null)),
        json!([1, 3, 6])
    );
    assert_eq!(
        ok(
            "[foreach (1, 2, 3) as $x (0; . + $x; [$x, .])]",
            json!(null)
        ),
        json!([[1, 1], [2, 3], [3, 6]])
    );
}

/// All outputs (or the error) of `src` run by plain jaq: no rewriting, no metering.
fn plain_jaq(src: &str, input: &Value) -> Result<Vec<Value>, String> {
    use jaq_core::load::{Arena, File, Loader};
    use jaq_core::{Compiler, data};
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: src,
                path: (),
            },
        )
        .map_err(|_| "syntax")?;
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|_| "undefined")?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, jaq_core::Vars::new([]));
    let mut out = Vec::new();
    for y in filter.id.run((ctx, convert::to_val(input))) {
        match y {
            Ok(v) => out.push(convert::from_val(&v, &mut u64::MAX.clone(), 10_000).unwrap()),
            Err(e) => {
                return Err(match exn_fail(e) {
                    Fail::Jq(m) => m,
                    _ => "other".to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[test]
fn expr_same_results_as_plain_jaq() {
    let input =
        json!({"a": [1, 2, {"b": null, "c": "x"}], "n": 3, "s": "a,b", "o": {"k": [true, false]}});
    let filters = [
        ".",
        ".a",
        ".a[]",
        "[.a[] | numbers]",
        ".a[2].c",
        "[..]",
        "[paths]",
        "[paths(type == \"string\")]",
        "[leaf_paths]",
        "to_entries",
        "with_entries(.value |= tostring)",
        "keys",
        "[.[] | length]",
        ".n * 2",
        ".n * 2.5",
        ".s * 2",
        ".o * {\"k\": 1}",
        ".a[0] *= 3",
        ".a[:2][] *= 2",
        ".n *= (1, 2)",
        "[.n * (1, 2)]",
        "[(1, 2) * (3, 4)]",
        "[range(.n)]",
        "[range(1; 10; .n)]",
        "[range(.n; 0; -1)]",
        "reduce .a[] as $x (0; . + 1)",
        "[foreach .a[] as $x (0; . + 1; [$x, .])]",
        "[limit(5; repeat(.n))]",
        "[.n | until(. > 20; . * 2)]",
        "[.n | while(. < 20; . * 2)]",
        "[recurse | numbers]",
        "[recurse(.a?[]?)]",
        "flatten",
        "[.a | flatten(1)]",
        "walk(if type == \"number\" then . + 1 else . end)",
        "del(.a[0])",
        "del(.. | nulls)",
        "delpaths([[\"a\", 0]])",
        "setpath([\"a\", 0]; 9)",
        "getpath([\"o\", \"k\", 1])",
        "(.. | numbers) |= . * 10",
        "[path(..)]",
        "path(.a[0])",
        "[path(recurse(.a?[]?))]",
        "pick(.o.k)",
        "[splits(\",\")]",
        ".s | split(\",\")",
        "[.s | scan(\"[a-z]\")]",
        ".s | sub(\",\"; \";\")",
        "tojson | fromjson",
        "[.a[] | tostring]",
        "@base64 \"\\(.n)\"",
        "[combinations(2)]?",
        "[.a | combinations]?",
        "input_line_number?",
        "def f: if . > 0 then . - 1 | f else \"done\" end; .n | f",
        "def f(g): g | g; .n | f(. + 1)",
        "def fac: if . <= 1 then 1 else . * (. - 1 | fac) end; [range(8) | fac]",
        "[.a[] | select(type == \"number\")] | add",
        "any(.a[]; . == 2)",
        "all(.a[]; . != null)",
        "isempty(empty)",
        "first(.a[])",
        "last(.a[])",
        "nth(1; .a[])",
        "[limit(2; .a[])]",
        "[skip(1; .a[])]",
        "indices(1)",
        ".a | index(2)",
        "[.a[] | tojson] | join(\"-\")",
        "transpose?",
        "[.a | min, max]",
        "[.a[:2] | sort, unique]",
        "group_by(.)?",
        ".o | map_values(length)",
        "[.a[] | type]",
        "ltrimstr(\"a\")",
        ".s | ascii_downcase | explode | implode",
        "todate?",
        "[1, 2] | getpath([0])",
        "[.a[] | .b?]",
        "try error(\"x\") catch .",
        "label $f | .a[] | if . == 2 then break $f else . end",
        ".a as [$x, $y] | {$x, $y}",
        ". as {n: $n, $s} | [$n, $s]",
        "[.a[] as [$x] | $x]?",
        "{(.s): 1}",
        "[.[] | objects | keys]",
        "\"\\(.n) \\(.s)\"",
        "@json",
        "@text",
        "@html \"<\\(.s)>\"",
        "@uri \"\\(.s) x\"",
        "@sh \"echo \\(.s)\"",
        ".n / 2",
        ".n % 2",
        "-.n",
        "[.n, 1] | .[0] / .[1]",
        "1e1000",
        "-1e1000",
        "nan | isnan",
        "infinite",
        "[1,2] - [2]",
        "{} | .a.b.c = 1",
        "[] | .[3] = 1",
        ".a[1:] = [\"z\"]",
        ".a |= map(numbers)",
        ".o.k[] |= not",
        "[.a[] | numbers | . as $x | [range($x)] | length]",
        "reduce range(5) as $i ([]; . + [$i * $i])",
        "[foreach range(5) as $i (0; . + $i)]",
        "[range(3) as $x | range($x)]",
        // calls in non-tail position (counted by `__kflow_nest`): paths, updates, generators,
        // errors, labels, closures, tail calls inside nested calls
        "def g: .a; [path(g)]",
        "def g: .a[]; [path(g)]",
        "def g: .a[0]; g |= . + 1",
        "def g: .a[] | numbers; (g) += 10",
        "def g: .o.k[]; [g] | length",
        "def g: .a[]; [g, (g | type)]",
        "def g: error(\"boom\"); try (1 + g) catch .",
        "def g: .a[]; [first(g), limit(2; g)]",
        "def g: .a[]; label $out | [g | if . == 2 then break $out else . end]",
        "def g(f): [f, f]; def h: .n; g(h) | add",
        "def loop: if . < 10 then . + 1 | loop else . end; [0 | loop] + [.n | loop]",
        "def d: if type == \"array\" then map(d) | add // 0 elif type == \"object\" then [.[] | d] | add // 0 elif type == \"number\" then . else 0 end; d",
        "[paths] as $p | def g: getpath($p[0]); [g]",
        "def g: .a[]; [.[] | objects | g?]",
        "def g: .a; reduce g[] as $x (0; . + ($x | numbers? // 0))",
        "def g: .a; [foreach g[] as $x (0; . + 1; [., (g | length)])]",
    ];
    for src in filters {
        let want = plain_jaq(src, &input);
        let got = match Expr::compile(src) {
            Ok(e) => e.eval_all(&input, &()),
            Err(e) => {
                assert_eq!(want, Err("undefined".to_string()), "{src}: {e}");
                continue;
            }
        };
        match (&want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{src}"),
            (Err(w), Err(ExprError::Eval { message, .. })) => assert_eq!(w, message, "{src}"),
            _ => panic!("{src}: plain jaq {want:?}, kflow {got:?}"),
        }
    }
}

#[test]
fn expr_comparison_and_eval_bool() {
    let t = |src: &str, input: Value| Expr::compile(src).unwrap().eval_bool(&input, &()).unwrap();
    assert!(t(".a > 3", json!({"a": 4})));
    assert!(!t(".a > 3", json!({"a": 3})));
    assert!(t(
        ".a == \"x\" and (.b | not)",
        json!({"a": "x", "b": false})
    ));
    assert!(!t(".missing", json!({})));
    let e = Expr::compile(".a")
        .unwrap()
        .eval_bool(&json!({"a": 1}), &())
        .unwrap_err();
    assert!(
        matches!(e, ExprError::Eval { ref message, .. } if message.contains("expected a boolean")),
        "{e}"
    );
}

#[test]
fn expr_jq_errors() {
    let m = eval_err("error(\"boom\")", json!(null));
    assert_eq!(m, "boom");
    let m = eval_err("error({a: 1})", json!(null));
    assert_eq!(m, r#"{"a":1}"#);
    let m = eval_err(".a.b", json!({"a": 1}));
    assert!(m.contains("cannot index 1"), "{m}");
    let m = eval_err("{} + 1", json!(null));
    assert!(m.contains("cannot calculate"), "{m}");
    let m = eval_err("range(\"a\")", json!(null));
    assert!(m.contains("range bounds must be numbers"), "{m}");
    let e = eval(".a.b", json!({"a": 1})).unwrap_err();
    assert!(
        e.to_string().starts_with("expression '.a.b' failed: "),
        "{e}"
    );
}

#[test]
fn expr_compile_errors() {
    let m = compile_err(".a ==");
    assert!(
        m.contains("unexpected end of expression, expected term"),
        "{m}"
    );
    let m = compile_err("foo(");
    assert_eq!(
        m,
        "`(` at offset 3 is never closed (closing parenthesis expected)"
    );
    let m = compile_err("(1 ]");
    assert!(
        m.contains("closing parenthesis expected at offset 3 for `(` at offset 0"),
        "{m}"
    );
    let m = compile_err("foo(1)");
    assert_eq!(m, "undefined function `foo/1` at offset 0");
    let m = compile_err(".a | map");
    assert_eq!(m, "undefined function `map/0` at offset 5");
    let m = compile_err("1 +");
    assert!(m.contains("expected term"), "{m}");
    let m = compile_err("if . then 1");
    assert!(m.contains("else or end"), "{m}");
    let m = compile_err(".a ) .b");
    assert!(m.contains("unexpected"), "{m}");
    let m = compile_err("");
    assert!(m.contains("expected term"), "{m}");
    let m = compile_err("\"abc");
    assert!(m.contains("closing quote"), "{m}");
    let m = compile_err("break $x");
    assert!(m.contains("undefined label `$x`"), "{m}");
    let m = compile_err("include \"foo\"; 1");
    assert!(m.contains("unexpected"), "{m}");
    let m = compile_err("__kflow_main");
    assert!(m.contains("reserved"), "{m}");
    let e = Expr::compile(".a ==").unwrap_err();
    assert!(
        e.to_string().starts_with("invalid jq expression '.a ==': "),
        "{e}"
    );
}

#[test]
fn expr_disabled_builtins() {
    for src in [
        "env",
        "$ENV",
        "$ENV.PATH",
        "env.HOME",
        "input",
        "inputs",
        "[inputs]",
        "now",
        "now | todate",
        "localtime",
        "strflocaltime(\"%Y\")",
        "debug",
        "debug(\"x\")",
        "stderr",
        "halt",
        "halt_error",
        "halt_error(1)",
        "$__loc__",
        "$__prog_args",
        "input_filename",
    ] {
        let m = compile_err(src);
        assert!(
            m.contains("is not available in kflow expressions"),
            "{src}: {m}"
        );
    }
    // defining one's own is fine
    assert_eq!(ok("def now: 5; now", json!(null)), json!(5));
    assert_eq!(ok("def env: {}; env", json!(null)), json!({}));
    // nothing of the removed set is left in the natives or the prelude
    let natives: Vec<&str> = runtime::natives().iter().map(|(n, ..)| *n).collect();
    for name in program::removed_names() {
        assert!(!natives.contains(&name), "{name}");
    }
}

#[test]
fn expr_runaway_recursion() {
    runaway("def f: 1+f; f", "recursion too deep");
    runaway("def f: [f]; f", "recursion too deep");
    // mutual recursion through a prelude higher-order function
    runaway("def f: [.] | map(f); f", "recursion too deep");
    // a `try` cannot swallow the stop
    runaway("def f: 1+f; try f catch \"caught\"", "recursion too deep");
    runaway("def f: (1+f)?; [f, 1]", "recursion too deep");
}

#[test]
fn expr_depth_budget() {
    let nested = Expr::compile("def f: if . == 0 then 0 else (. - 1 | f) + 1 end; f").unwrap();
    let small = Limits {
        max_depth: 10,
        ..Limits::default()
    };
    let at = |n: u32, limits: &Limits| nested.eval_with_limits(&json!(n), &(), limits);
    assert_eq!(at(10, &small).unwrap(), json!(10));
    let err = at(11, &small).unwrap_err().to_string();
    assert!(
        err.ends_with("expression recursion too deep (more than 10 nested calls)"),
        "{err}"
    );
    // the default budget: the same point whether the run stays inline or moves to a worker
    assert_eq!(at(2000, &Limits::default()).unwrap(), json!(2000));
    for _ in 0..20 {
        let err = at(2001, &Limits::default()).unwrap_err().to_string();
        assert!(err.ends_with("(more than 2000 nested calls)"), "{err}");
    }
    // recursion through a prelude higher-order function counts as well
    let map = Expr::compile("def f: if . == 0 then 0 else [. - 1] | map(f) | .[0] + 1 end; f");
    let map = map.unwrap();
    assert_eq!(
        map.eval_with_limits(&json!(10), &(), &small).unwrap(),
        json!(10)
    );
    assert!(map.eval_with_limits(&json!(11), &(), &small).is_err());
    // tail calls are loops, not nesting
    let tail = Expr::compile("def f: if . == 0 then \"done\" else . - 1 | f end; f").unwrap();
    let one = Limits {
        max_depth: 1,
        ..Limits::default()
    };
    assert_eq!(
        tail.eval_with_limits(&json!(100_000), &(), &one).unwrap(),
        json!("done")
    );
    assert_eq!(ok("until(. >= 5000; . + 1)", json!(0)), json!(5000));
    // deep data through recursive builtins: as deep as a result may be
    let deep = ok("reduce range(1024) as $x (0; [.])", json!(null));
    assert_eq!(ok("flatten", deep.clone()), json!([0]));
    assert_eq!(ok("[.. | numbers]", deep), json!([0]));
}

#[test]
fn expr_default_limits_are_deterministic() {
    assert_eq!(Limits::default(), Limits::deterministic());
    assert_eq!(Limits::deterministic().time_budget, None);
    let timed = Limits::deterministic().with_time_budget(Duration::from_millis(5));
    assert_eq!(timed.time_budget, Some(Duration::from_millis(5)));
    assert_eq!(timed.max_steps, Limits::deterministic().max_steps);
    // a runaway ends on its step budget, with the same message every time
    let e = Expr::compile("[range(1e18)]").unwrap();
    let first = e.eval(&json!(null), &()).unwrap_err();
    for _ in 0..3 {
        assert_eq!(e.eval(&json!(null), &()).unwrap_err(), first);
    }
    assert!(
        first.to_string().contains("step budget of 1000000"),
        "{first}"
    );
}

#[test]
fn expr_runaway_generators() {
    // the first output of a generator is the result: these end at once
    assert_eq!(ok("repeat(.)", json!(3)), json!(3));
    assert_eq!(ok("range(1e18)", json!(null)), json!(0));
    // collecting them does not end
    runaway("[repeat(.)]", "budget");
    runaway("[range(1e18)]", "budget");
    runaway("[limit(1e9; repeat(1))]", "budget");
    runaway("last(range(1e18))", "budget");
    runaway("reduce range(1e18) as $x (0; . + $x)", "budget");
    runaway("until(false; .)", "budget");
    runaway("def f: f; f", "budget");
    runaway("[range(0; 10; 0)]", "budget");
    runaway("[1, 2] | [.[] as $x | range(1e18)]", "budget");
    // a tail-recursive loop is not a deep recursion: it runs into the step/time budgets
    runaway("def f: . + 1 | f; 0 | f", "budget");
    // eval_all stops at the output cap
    let e = Expr::compile("repeat(.)")
        .unwrap()
        .eval_all(&json!(1), &())
        .unwrap_err();
    assert!(e.to_string().contains("more than 10000 results"), "{e}");
}

#[test]
fn expr_budget_messages() {
    let e = Expr::compile("[range(1e18)]").unwrap();
    let limits = Limits {
        max_steps: u64::MAX,
        ..Limits::default()
    }
    .with_time_budget(Duration::from_millis(50));
    let start = Instant::now();
    let err = e.eval_with_limits(&json!(null), &(), &limits).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.to_string(),
        "expression '[range(1e18)]' failed: expression exceeded its time budget of 50 ms"
    );
    let limits = Limits {
        max_steps: 100,
        ..Limits::default()
    };
    let err = e.eval_with_limits(&json!(null), &(), &limits).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("expression exceeded its step budget of 100 evaluation steps"),
        "{err}"
    );
    // inline step allowance exhausted, but within the full budget: moves to a big stack
    let limits = Limits {
        max_steps: 10_000,
        ..Limits::default()
    };
    let v = Expr::compile("[range(9000)] | length")
        .unwrap()
        .eval_with_limits(&json!(null), &(), &limits);
    assert_eq!(v.unwrap(), json!(9000));
}

#[test]
fn expr_size_limits() {
    let m = runaway(r#""x" * 1000000000000"#, "result too large");
    assert!(m.contains("1000000000000 bytes"), "{m}");
    runaway(r#""abc" * 100000000000000000000000"#, "result too large");
    runaway(
        r#"reduce range(40) as $i ("xx"; . * 2)"#,
        "result too large",
    );
    let limits = Limits {
        max_result_bytes: 1000,
        ..Limits::default()
    };
    let e = Expr::compile("[range(1000)]").unwrap();
    let err = e.eval_with_limits(&json!(null), &(), &limits).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("expression result too large (more than 1000 bytes)"),
        "{err}"
    );
    // exponentially shared structure is refused when converted
    let err = eval_err(
        "[.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.] | [.,.]",
        json!("x"),
    );
    assert!(err.contains("result too large"), "{err}");
    let err = eval_err("reduce range(2000) as $x (0; [.])", json!(null));
    assert!(err.contains("too deeply nested"), "{err}");
    assert_eq!(
        ok("reduce range(1000) as $x (0; [.]) | flatten", json!(null)),
        json!([0])
    );
}

#[test]
fn expr_deep_but_finite_recursion_moves_to_big_stack() {
    // non-tail recursion, far deeper than the inline stack allowance
    let src = "def f: if . == 0 then 0 else (. - 1 | f) + 1 end; f";
    assert_eq!(
        Expr::compile(src).unwrap().eval(&json!(1000), &()).unwrap(),
        json!(1000)
    );
    // a long tail-recursive loop
    assert_eq!(ok("until(. >= 100000; . + 1)", json!(0)), json!(100000));
    assert_eq!(ok("[range(100000)] | length", json!(null)), json!(100000));
    assert_eq!(
        ok("reduce range(100000) as $x (0; . + $x)", json!(null)),
        json!(4999950000i64)
    );
    // deep input data through recursive builtins
    let mut deep = json!(1);
    for _ in 0..120 {
        deep = json!([deep]);
    }
    assert_eq!(ok("[.. | numbers]", deep.clone()), json!([1]));
    assert_eq!(ok("flatten", deep.clone()), json!([1]));
    assert_eq!(
        ok(
            "walk(if type == \"number\" then . + 1 else . end) | flatten",
            deep
        ),
        json!([2])
    );
}

#[test]
fn expr_big_sources() {
    // long sources are compiled and evaluated on a big stack
    let src = vec!["1"; 3000].join(" + ");
    assert_eq!(ok(&src, json!(null)), json!(3000));
    let src = format!("{}1{}", "[".repeat(500), "]".repeat(500));
    let v = ok(&format!("{src} | flatten"), json!(null));
    assert_eq!(v, json!([1]));
    let src = format!("{}1", "- ".repeat(2000));
    assert_eq!(ok(&src, json!(null)), json!(1));
    let m = compile_err(&"1+".repeat(40_000));
    assert!(m.contains("longer than"), "{m}");
}

#[test]
fn expr_concurrent_use() {
    let e = Expr::compile(".colors + [$color] | length").unwrap();
    let slow = Expr::compile("def f: if . == 0 then 0 else (. - 1 | f) + 1 end; f").unwrap();
    std::thread::scope(|s| {
        for i in 0..4 {
            let (e, slow) = (e.clone(), slow.clone());
            s.spawn(move || {
                let v = vars(&[("color", json!("red"))]);
                for _ in 0..200 {
                    assert_eq!(e.eval(&json!({"colors": [i]}), &v).unwrap(), json!(2));
                }
                assert_eq!(slow.eval(&json!(500), &()).unwrap(), json!(500));
            });
        }
    });
}

#[test]
fn expr_prelude_analysis() {
    // `repeat`, `recurse`, `while`, `until` recurse through their local `rec`
    let rec = program::prelude_recursive_names();
    assert_eq!(rec.iter().filter(|n| **n == "rec").count(), 4, "{rec:?}");
    assert!(rec.contains(&"flatten"), "{rec:?}");
    for name in [
        "repeat",
        "recurse",
        "while",
        "until",
        "map",
        "select",
        "not",
        "to_entries",
        "add",
        "join",
        "walk",
    ] {
        assert!(!rec.contains(&name), "{name} should not tick: {rec:?}");
    }
}

#[test]
fn expr_strip_dollar_braces() {
    assert_eq!(strip_dollar_braces(" ${ .a } "), Some(".a"));
    assert_eq!(strip_dollar_braces(".a"), None);
}

/// Prints the stack used per recursion level.
#[test]
#[ignore]
fn expr_stack_per_level() {
    for src in [
        "def f: if . == 0 then 0 else (. - 1 | f) + 1 end; f",
        "def f: if . == 0 then [] else [. - 1 | f] end; f",
        "def f: if . == 0 then 0 else 1 + (. - 1 | f) end; f",
        "def f: if . == 0 then {a: 0} else {a: ({b: [(. - 1 | f)]} | .b[0].a + 1)} end; f",
        "def f: if . == 0 then 0 else [.] | map(. - 1 | f) | .[0] + 1 end; f",
        "def f($n): if $n == 0 then 0 else (reduce (f($n - 1), 1) as $x (0; . + $x)) end; f(.)",
    ] {
        let e = Expr::compile(src).unwrap();
        for n in [100, 1000] {
            let input = convert::to_val(&json!(n));
            let limits = Limits::default();
            let job = Job {
                program: &e.inner.program,
                input: &input,
                globals: &[],
                limits: &limits,
                deadline: None,
                first_only: true,
            };
            let (steps, stack) = on_big_stack(|| {
                let guard = Guard::new(
                    BIG_STACK_BUDGET,
                    u64::MAX,
                    false,
                    u32::MAX,
                    job.deadline,
                    1 << 30,
                );
                assert!(job.pull(&guard).is_ok());
                guard.usage()
            })
            .unwrap();
            println!(
                "{src} | n = {n}: {steps} steps, {stack} bytes of stack, {} bytes per level",
                stack / n
            );
        }
    }
}

/// Prints the stack used per syntactic nesting level (between ticks).
#[test]
#[ignore]
fn expr_stack_per_nesting() {
    let n = 40;
    for (open, close) in [
        ("1 + (", ")"),
        ("[", "]"),
        ("{a: ", "}"),
        ("(. | ", ")"),
        ("(if . then ", " else 1 end)"),
        ("(1, ", ")"),
        ("(. as $x | ", ")"),
        ("(reduce 1 as $x (.; ", "))"),
        ("(", " + 1)"),
        ("((", ") | tostring)"),
    ] {
        let src = format!("def f: .; {}f{}", open.repeat(n), close.repeat(n));
        let e = Expr::compile(&src).unwrap();
        let input = convert::to_val(&json!(1));
        let limits = Limits::default();
        let job = Job {
            program: &e.inner.program,
            input: &input,
            globals: &[],
            limits: &limits,
            deadline: None,
            first_only: true,
        };
        let (_, stack) = on_big_stack(|| {
            let guard = Guard::new(
                BIG_STACK_BUDGET,
                u64::MAX,
                false,
                u32::MAX,
                job.deadline,
                1 << 30,
            );
            let _ = job.pull(&guard);
            guard.usage()
        })
        .unwrap();
        println!("{open}…{close}: {} bytes per level", stack / n);
    }
}
