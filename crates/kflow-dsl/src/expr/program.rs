//! From source text to a compiled jaq filter: lexing and parsing with jaq's public parser,
//! rewriting the syntax tree so evaluation is metered, picking the prelude definitions the
//! filter needs, and compiling with kflow's native filters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use jaq_core::load::lex::{self, StrPart, Token};
use jaq_core::load::parse::{self, BinaryOp, Def, Pattern, Term};
use jaq_core::load::{Arena, File, Lexer, Loader, Parser};
use jaq_core::ops::Math;
use jaq_core::path::Part;

#[cfg(test)]
use super::runtime::REMOVED_NATIVES;
use super::runtime::{Kd, MUL, NEST, TICK, natives};
use super::walk::{
    children, collect_bound, collect_keys, collect_refs, collect_vars, depth, reads_input,
};

/// Name of the prelude definition holding the user's filter (it is compiled as the last
/// definition of the prelude, so that its syntax tree can be rewritten before compiling).
const MAIN: &str = "__kflow_main";
/// Names starting with this are reserved for the rewriter.
const RESERVED: &str = "__kflow_";
/// Variable bound by the `l *= r` rewrite.
const MUL_RHS: &str = "$__kflow_rhs";

/// Prelude definitions that reach the host; left out.
const REMOVED_DEFS: &[&str] = &["debug", "stderr", "halt", "halt_error"];

/// Variables never declared as globals (they reach the host or the jq command line).
const HOST_VARS: &[&str] = &["$ENV", "$__loc__", "$__prog_args", "$__prog_name"];

/// A compiled filter and the global variables it was compiled with (names without `$`).
pub(super) struct Program {
    pub filter: jaq_core::Filter<Kd>,
    pub globals: Vec<String>,
    /// `$name.key` / `$name["key"]` reads of a global with a literal first key, as
    /// `(name without $, key)`, without duplicates; empty for a name the filter binds itself
    /// (`... as $name`, `def f($name)`), whose reads are not of the global.
    pub keys: Vec<(String, String)>,
    /// The syntax tree is nested deeper than [`MAX_INLINE_DEPTH`]: evaluate on a big stack.
    pub deep: bool,
    /// The filter may observe its input (see [`reads_input`]).
    pub reads_input: bool,
}

/// Deepest syntax tree evaluated inline. Evaluation recurses along the tree without ticking
/// (about 5 KiB of stack per level in an unoptimised build), so the inline stack allowance of
/// ticks does not cover it.
const MAX_INLINE_DEPTH: usize = 40;

/// Compiles `src`; `Err` is the human-readable message.
pub(super) fn compile(src: &str) -> Result<Program, String> {
    let tokens = Lexer::new(src)
        .lex()
        .map_err(|errs| lex_message(src, &errs))?;
    let term = Parser::new(&tokens)
        .parse(|p| p.term())
        .map_err(|errs| parse_message(src, &errs))?;

    let deep = depth(&term) > MAX_INLINE_DEPTH;
    let reads_input = reads_input(&term);
    let mut refs = BTreeSet::new();
    collect_refs(&term, &mut refs);
    if let Some(name) = refs.iter().find(|n| n.starts_with(RESERVED)) {
        return Err(format!("`{name}` is a reserved name"));
    }
    let mut vars = Vec::new();
    collect_vars(&term, &mut vars);
    if let Some(name) = vars.iter().find(|n| n.starts_with("$__kflow_")) {
        return Err(format!("`{name}` is a reserved name"));
    }
    let globals: Vec<&str> = vars
        .into_iter()
        .filter(|v| !HOST_VARS.contains(v))
        .collect();
    let mut keys = Vec::new();
    collect_keys(&term, &mut keys);
    let mut bound = BTreeSet::new();
    collect_bound(&term, &mut bound);
    let keys: Vec<(String, String)> = keys
        .into_iter()
        .filter(|(var, _)| !bound.contains(var))
        .map(|(var, key)| (var[1..].to_string(), key))
        .collect();

    let prelude = prelude();
    let mut user_defs = BTreeSet::new();
    collect_defs(&term, &mut user_defs);
    let rewriter = Rewriter {
        tick_def: &|_| true,
        nest_call: &|name, arity| {
            user_defs.contains(&(name, arity)) || prelude.recursive.contains(&(name, arity))
        },
    };
    let mut main = Def {
        name: MAIN,
        args: Vec::new(),
        body: term,
    };
    rewriter.def(&mut main);

    let defs = prelude
        .needed(&refs)
        .map(shorten)
        .chain(std::iter::once(main));
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(
            &arena,
            File {
                code: MAIN,
                path: (),
            },
        )
        .map_err(|_| "internal error: cannot load the expression".to_string())?;
    let filter = jaq_core::Compiler::default()
        .with_funs(natives())
        .with_global_vars(globals.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            let errs = errs.into_iter().flat_map(|(_file, errs)| errs);
            let msgs: Vec<String> = errs
                .map(|(name, undef)| undefined_message(src, name, &undef))
                .collect();
            dedup_join(msgs)
        })?;
    let globals = globals.iter().map(|g| g[1..].to_string()).collect();
    Ok(Program {
        filter,
        globals,
        keys,
        deep,
        reads_input,
    })
}

/// Whether `src` is large or nested enough that parsing and compiling it might recurse deeply;
/// such expressions are compiled and evaluated on a big-stack thread.
pub(super) fn is_big(src: &str) -> bool {
    const MAX_INLINE_LEN: usize = 512;
    const MAX_INLINE_NESTING: usize = 24;
    if src.len() > MAX_INLINE_LEN {
        return true;
    }
    let (mut depth, mut max) = (0usize, 0usize);
    for b in src.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max > MAX_INLINE_NESTING
}

// ---------------------------------------------------------------------------------------------
// Error messages

fn offset(src: &str, part: &str) -> Option<usize> {
    let (s, p) = (src.as_ptr() as usize, part.as_ptr() as usize);
    (p >= s && p <= s + src.len()).then(|| p - s)
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    let mut out: String = s.chars().take(24).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn lex_message(src: &str, errs: &[lex::Error<&str>]) -> String {
    let msgs = errs.iter().map(|(expect, rest)| {
        let at = offset(src, rest).unwrap_or(0);
        match expect {
            lex::Expect::Delim(open) => {
                let opened = offset(src, open)
                    .map(|o| format!(" at offset {o}"))
                    .unwrap_or_default();
                if rest.trim().is_empty() {
                    format!(
                        "`{open}`{opened} is never closed ({} expected)",
                        expect.as_str()
                    )
                } else {
                    format!(
                        "{} expected at offset {at} for `{open}`{opened}, found `{}`",
                        expect.as_str(),
                        snippet(rest)
                    )
                }
            }
            lex::Expect::Token => {
                format!("unexpected character `{}` at offset {at}", snippet(rest))
            }
            _ => format!(
                "{} expected at offset {at}, found `{}`",
                expect.as_str(),
                snippet(rest)
            ),
        }
    });
    dedup_join(msgs.collect())
}

fn parse_message(src: &str, errs: &[parse::TError<'_, &str>]) -> String {
    let msgs = errs.iter().map(|(expect, found)| {
        let what = match expect {
            parse::Expect::Nothing => "end of expression".to_string(),
            e => e.as_str().to_string(),
        };
        match found {
            Some(Token(text, _)) => {
                let at = offset(src, text).unwrap_or(0);
                format!(
                    "unexpected `{}` at offset {at}, expected {what}",
                    snippet(text)
                )
            }
            None => format!("unexpected end of expression, expected {what}"),
        }
    });
    dedup_join(msgs.collect())
}

fn undefined_message(src: &str, name: &str, undef: &jaq_core::compile::Undefined) -> String {
    use jaq_core::compile::Undefined;
    if let Some(reason) = disabled_reason(name) {
        return format!("`{name}` is not available in kflow expressions: {reason}");
    }
    let at = offset(src, name)
        .map(|o| format!(" at offset {o}"))
        .unwrap_or_default();
    match undef {
        Undefined::Filter(arity) => format!("undefined function `{name}/{arity}`{at}"),
        other => format!("undefined {} `{name}`{at}", other.as_str()),
    }
}

/// Why a builtin that exists in jq is unavailable here, if it is one of those.
fn disabled_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "env" | "$ENV" => "it reads the host environment",
        "input" | "inputs" | "input_filename" | "input_line_number" | "$__prog_args"
        | "$__prog_name" | "get_search_list" => "there is no process input here",
        "debug" | "stderr" | "debug_empty" | "stderr_empty" => "it writes to the process output",
        "halt" | "halt_error" => "it stops the process",
        "now" | "localtime" | "strflocaltime" => {
            "it depends on the clock or the host time zone and evaluation must be deterministic \
             (pass times in through a variable)"
        }
        "$__loc__" => "source locations are not tracked",
        _ => return None,
    })
}

fn dedup_join(msgs: Vec<String>) -> String {
    let mut seen = BTreeSet::new();
    let unique: Vec<String> = msgs
        .into_iter()
        .filter(|m| seen.insert(m.clone()))
        .collect();
    if unique.is_empty() {
        "invalid expression".to_string()
    } else {
        unique.join("; ")
    }
}

/// `__kflow_tick | body`: keeps `body` in tail position, so jaq's tail-call optimisation
/// still applies to recursive definitions.
fn tick_before<'s>(body: Term<&'s str>) -> Term<&'s str> {
    Term::BinOp(
        Box::new(Term::Call(TICK, Vec::new())),
        BinaryOp::Pipe(None),
        Box::new(body),
    )
}

/// Rewrites syntax trees in place so that evaluation is metered:
/// * the body of every local definition for which `tick_def` holds starts with a tick
///   (all user definitions are ticked; prelude definitions only when they can recurse);
/// * the update of every `reduce`/`foreach` starts with a tick;
/// * every call in non-tail position of a definition for which `nest_call` holds becomes
///   `__kflow_nest(call)`, which counts the nesting depth;
/// * `l * r` becomes `__kflow_mul(l; r)` and `l *= r` becomes
///   `r as $__kflow_rhs | l |= __kflow_mul(.; $__kflow_rhs)`.
///
/// Tail positions are the ones jaq's compiler optimises (see `jaq_core::compile`): both sides
/// of `f, g`, the right side of `f // g`, `f | g` and `f as $x | g`, the branches of an `if`,
/// the extraction of a `foreach`, the rest of `def x: f; g`, and a definition's body. A call in
/// tail position either is a tail call (it does not grow the stack) or cannot take part in a
/// recursion without a non-tail call on the way, so counting the non-tail calls bounds the
/// stack. Wrapping a non-tail call does not change how jaq compiles it (a native's argument is
/// compiled in non-tail position as well).
struct Rewriter<'r, 's> {
    tick_def: &'r dyn Fn(&Def<&'s str>) -> bool,
    nest_call: &'r dyn Fn(&str, usize) -> bool,
}

impl<'s> Rewriter<'_, 's> {
    fn term(&self, t: &mut Term<&'s str>, tail: bool) {
        match t {
            Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_) => {}
            Term::Str(_, parts) => parts.iter_mut().for_each(|p| {
                if let StrPart::Term(t) = p {
                    self.term(t, false)
                }
            }),
            Term::Arr(a) => a.iter_mut().for_each(|a| self.term(a, false)),
            Term::Obj(kvs) => kvs.iter_mut().for_each(|(k, v)| {
                self.term(k, false);
                v.iter_mut().for_each(|v| self.term(v, false));
            }),
            Term::Neg(t) | Term::Label(_, t) => self.term(t, false),
            Term::BinOp(l, op, r) => {
                let (l_tail, r_tail) = match op {
                    BinaryOp::Comma => (tail, tail),
                    BinaryOp::Alt | BinaryOp::Pipe(_) => (false, tail),
                    _ => (false, false),
                };
                self.term(l, l_tail);
                if let BinaryOp::Pipe(Some(p)) = op {
                    self.pattern(p);
                }
                self.term(r, r_tail);
                match op {
                    BinaryOp::Math(Math::Mul) => {
                        let (l, r) = (std::mem::take(&mut **l), std::mem::take(&mut **r));
                        *t = Term::Call(MUL, vec![l, r]);
                    }
                    BinaryOp::UpdateMath(Math::Mul) => {
                        let (l, r) = (std::mem::take(&mut **l), std::mem::take(&mut **r));
                        let mul = Term::Call(MUL, vec![Term::Id, Term::Var(MUL_RHS)]);
                        let update = Term::BinOp(Box::new(l), BinaryOp::Update, Box::new(mul));
                        let bind = BinaryOp::Pipe(Some(Pattern::Var(MUL_RHS)));
                        *t = Term::BinOp(Box::new(r), bind, Box::new(update));
                    }
                    _ => {}
                }
            }
            Term::Fold(name, xs, pat, args) => {
                let foreach = *name == "foreach";
                self.term(xs, false);
                self.pattern(pat);
                for (i, a) in args.iter_mut().enumerate() {
                    self.term(a, tail && foreach && i == 2);
                }
                if let Some(update) = args.get_mut(1) {
                    *update = tick_before(std::mem::take(update));
                }
            }
            Term::TryCatch(t, c) => {
                self.term(t, false);
                c.iter_mut().for_each(|c| self.term(c, false));
            }
            Term::IfThenElse(its, e) => {
                its.iter_mut().for_each(|(i, t)| {
                    self.term(i, false);
                    self.term(t, tail);
                });
                e.iter_mut().for_each(|e| self.term(e, tail));
            }
            Term::Def(defs, t) => {
                defs.iter_mut().for_each(|d| self.def(d));
                self.term(t, tail);
            }
            Term::Call(name, args) => {
                args.iter_mut().for_each(|a| self.term(a, false));
                if !tail && (self.nest_call)(name, args.len()) {
                    *t = Term::Call(NEST, vec![std::mem::take(t)]);
                }
            }
            Term::Path(t, path) => {
                self.term(t, false);
                path.0.iter_mut().for_each(|(part, _opt)| match part {
                    Part::Index(i) => self.term(i, false),
                    Part::Range(a, b) => {
                        a.iter_mut().for_each(|a| self.term(a, false));
                        b.iter_mut().for_each(|b| self.term(b, false));
                    }
                });
            }
        }
    }

    /// Rewrites a definition: its body is in tail position.
    fn def(&self, d: &mut Def<&'s str>) {
        self.term(&mut d.body, true);
        if (self.tick_def)(d) {
            d.body = tick_before(std::mem::take(&mut d.body));
        }
    }

    fn pattern(&self, p: &mut Pattern<&'s str>) {
        match p {
            Pattern::Var(_) => {}
            Pattern::Arr(ps) => ps.iter_mut().for_each(|p| self.pattern(p)),
            Pattern::Obj(kps) => kps.iter_mut().for_each(|(k, p)| {
                self.term(k, false);
                self.pattern(p);
            }),
        }
    }
}

/// Name and arity of every definition in `t` (nested ones included).
fn collect_defs<'s>(t: &Term<&'s str>, out: &mut BTreeSet<(&'s str, usize)>) {
    if let Term::Def(defs, _) = t {
        out.extend(defs.iter().map(|d| (d.name, d.args.len())));
    }
    children(t, &mut |c| collect_defs(c, out));
}

// ---------------------------------------------------------------------------------------------
// Prelude

/// The jaq core, std and json definitions, host-reaching ones removed, rewritten once.
struct Prelude {
    defs: Vec<Def<&'static str>>,
    /// `refs[i]`: names of the filters `defs[i]` may call.
    refs: Vec<BTreeSet<&'static str>>,
    /// Name and arity of the definitions that can take part in a recursion.
    recursive: BTreeSet<Key>,
}

fn prelude() -> &'static Prelude {
    static PRELUDE: OnceLock<Prelude> = OnceLock::new();
    PRELUDE.get_or_init(Prelude::build)
}

type Key = (&'static str, usize);

impl Prelude {
    fn build() -> Prelude {
        let all = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let mut defs: Vec<Def<&'static str>> =
            all.filter(|d| !REMOVED_DEFS.contains(&d.name)).collect();

        // Which definitions can take part in a recursion? Name-and-arity call graph over all
        // definitions (nested ones included); merging equal keys only over-approximates.
        let mut graph: BTreeMap<Key, BTreeSet<Key>> = BTreeMap::new();
        for d in &defs {
            add_def_edges(d, &mut graph);
        }
        let recursive: BTreeSet<Key> = graph
            .keys()
            .copied()
            .filter(|k| reaches(&graph, *k, *k))
            .collect();

        for d in &mut defs {
            rewrite_prelude_def(d, &recursive);
        }
        let refs = defs
            .iter()
            .map(|d| {
                let mut r = BTreeSet::new();
                collect_refs(&d.body, &mut r);
                r
            })
            .collect();
        Prelude {
            defs,
            refs,
            recursive,
        }
    }

    /// The definitions a filter calling `refs` needs, in prelude order (a definition only calls
    /// earlier ones, so one backwards pass finds them all).
    fn needed<'p>(&'p self, refs: &BTreeSet<&str>) -> impl Iterator<Item = Def<&'static str>> + 'p {
        let mut names: BTreeSet<&str> = refs.iter().copied().collect();
        let mut keep = vec![false; self.defs.len()];
        for (i, d) in self.defs.iter().enumerate().rev() {
            if names.contains(d.name) {
                keep[i] = true;
                names.extend(self.refs[i].iter().copied());
            }
        }
        self.defs
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(d, _)| d.clone())
    }
}

/// `Def<&'static str>` is a `Def<&'s str>` (covariance).
fn shorten<'s>(d: Def<&'static str>) -> Def<&'s str> {
    d
}

fn key(d: &Def<&'static str>) -> Key {
    (d.name, d.args.len())
}

/// Adds the call edges of `d` (and of the definitions nested in it) to `graph`.
fn add_def_edges(d: &Def<&'static str>, graph: &mut BTreeMap<Key, BTreeSet<Key>>) {
    let mut calls = BTreeSet::new();
    body_calls(&d.body, &mut calls, graph);
    graph.entry(key(d)).or_default().extend(calls);
}

/// Calls made by `t`, not descending into nested definition bodies (added as their own nodes).
fn body_calls(
    t: &Term<&'static str>,
    out: &mut BTreeSet<Key>,
    graph: &mut BTreeMap<Key, BTreeSet<Key>>,
) {
    match t {
        Term::Call(name, args) => {
            out.insert((name, args.len()));
        }
        Term::Str(Some(fmt), _) => {
            out.insert((fmt, 0));
        }
        Term::Def(defs, rest) => {
            for d in defs {
                add_def_edges(d, graph);
            }
            body_calls(rest, out, graph);
            return;
        }
        _ => {}
    }
    children(t, &mut |c| body_calls(c, out, graph));
}

fn reaches(graph: &BTreeMap<Key, BTreeSet<Key>>, from: Key, target: Key) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<Key> = graph.get(&from).into_iter().flatten().copied().collect();
    while let Some(k) = todo.pop() {
        if k == target {
            return true;
        }
        if seen.insert(k) {
            todo.extend(graph.get(&k).into_iter().flatten().copied());
        }
    }
    false
}

/// [`Rewriter`], ticking and nesting the recursive definitions only.
fn rewrite_prelude_def(d: &mut Def<&'static str>, recursive: &BTreeSet<Key>) {
    let rewriter = Rewriter {
        tick_def: &|d| recursive.contains(&key(d)),
        nest_call: &|name, arity| recursive.contains(&(name, arity)),
    };
    rewriter.def(d);
}

/// Names of definitions and natives that exist in jq but are removed here (for tests).
#[cfg(test)]
pub(super) fn removed_names() -> impl Iterator<Item = &'static str> {
    REMOVED_DEFS.iter().chain(REMOVED_NATIVES).copied()
}

#[cfg(test)]
pub(super) fn prelude_recursive_names() -> Vec<&'static str> {
    fn ticked(t: &Term<&'static str>) -> bool {
        matches!(t, Term::BinOp(l, BinaryOp::Pipe(None), _) if matches!(&**l, Term::Call(n, a) if *n == TICK && a.is_empty()))
    }
    fn walk(d: &Def<&'static str>, out: &mut Vec<&'static str>) {
        if ticked(&d.body) {
            out.push(d.name);
        }
        fn inner(t: &Term<&'static str>, out: &mut Vec<&'static str>) {
            if let Term::Def(defs, rest) = t {
                defs.iter().for_each(|d| walk(d, out));
                return inner(rest, out);
            }
            children(t, &mut |c| inner(c, out));
        }
        inner(&d.body, out);
    }
    let mut out = Vec::new();
    prelude().defs.iter().for_each(|d| walk(d, &mut out));
    out
}
