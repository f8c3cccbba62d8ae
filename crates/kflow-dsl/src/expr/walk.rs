//! Walks over a parsed filter's syntax tree: its sub-terms, its depth, the filters and
//! variables it references, and whether it reads its input.

use std::collections::BTreeSet;

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Pattern, Term};
use jaq_core::path::Part;

/// Calls `f` on every direct sub-term of `t` (definition bodies included).
pub(super) fn children<'t, S>(t: &'t Term<S>, f: &mut dyn FnMut(&'t Term<S>)) {
    match t {
        Term::Id | Term::Recurse | Term::Num(_) | Term::Break(_) | Term::Var(_) => {}
        Term::Str(_, parts) => parts.iter().for_each(|p| {
            if let StrPart::Term(t) = p {
                f(t)
            }
        }),
        Term::Arr(a) => a.iter().for_each(|a| f(a)),
        Term::Obj(kvs) => kvs.iter().for_each(|(k, v)| {
            f(k);
            v.iter().for_each(|v| f(v));
        }),
        Term::Neg(t) | Term::Label(_, t) => f(t),
        Term::BinOp(l, op, r) => {
            f(l);
            if let BinaryOp::Pipe(Some(p)) = op {
                pattern_children(p, f);
            }
            f(r);
        }
        Term::Fold(_, xs, pat, args) => {
            f(xs);
            pattern_children(pat, f);
            args.iter().for_each(|a| f(a));
        }
        Term::TryCatch(t, c) => {
            f(t);
            c.iter().for_each(|c| f(c));
        }
        Term::IfThenElse(its, e) => {
            its.iter().for_each(|(i, t)| {
                f(i);
                f(t);
            });
            e.iter().for_each(|e| f(e));
        }
        Term::Def(defs, t) => {
            defs.iter().for_each(|d| f(&d.body));
            f(t);
        }
        Term::Call(_, args) => args.iter().for_each(|a| f(a)),
        Term::Path(t, path) => {
            f(t);
            path.0.iter().for_each(|(part, _opt)| match part {
                Part::Index(i) => f(i),
                Part::Range(a, b) => {
                    a.iter().for_each(|a| f(a));
                    b.iter().for_each(|b| f(b));
                }
            });
        }
    }
}

pub(super) fn pattern_children<'t, S>(p: &'t Pattern<S>, f: &mut dyn FnMut(&'t Term<S>)) {
    match p {
        Pattern::Var(_) => {}
        Pattern::Arr(ps) => ps.iter().for_each(|p| pattern_children(p, f)),
        Pattern::Obj(kps) => kps.iter().for_each(|(k, p)| {
            f(k);
            pattern_children(p, f);
        }),
    }
}

/// Nesting depth of a syntax tree.
pub(super) fn depth<S>(t: &Term<S>) -> usize {
    let mut max = 0;
    children(t, &mut |c| max = max.max(depth(c)));
    max + 1
}

/// Names of all filters `t` may call (including format filters such as `@base64`).
pub(super) fn collect_refs<'s>(t: &Term<&'s str>, out: &mut BTreeSet<&'s str>) {
    match t {
        Term::Call(name, _) | Term::Str(Some(name), _) => {
            out.insert(name);
        }
        _ => {}
    }
    children(t, &mut |c| collect_refs(c, out));
}

/// Filters (name, arity) that never look at their input: their arguments may.
const IGNORE_INPUT: &[(&str, usize)] = &[
    ("true", 0),
    ("false", 0),
    ("null", 0),
    ("empty", 0),
    ("now", 0),
    ("infinite", 0),
    ("nan", 0),
    ("range", 1),
    ("range", 2),
    ("range", 3),
    ("error", 1),
];

/// Whether `t` may observe its input (`.`): false only when every value it reads comes from
/// variables, literals, or filters known to ignore their input (`$workflow.input.id`,
/// `"x" + $context.y`, `range(3)`). Anything unsure counts as a read: a call of any other
/// filter (it runs on `.`), a local definition, a format string.
pub(super) fn reads_input(t: &Term<&str>) -> bool {
    fn pattern(p: &Pattern<&str>) -> bool {
        match p {
            Pattern::Var(_) => false,
            Pattern::Arr(ps) => ps.iter().any(pattern),
            Pattern::Obj(kps) => kps.iter().any(|(k, p)| reads_input(k) || pattern(p)),
        }
    }
    match t {
        Term::Id | Term::Recurse | Term::Str(Some(_), _) | Term::Def(..) => true,
        Term::Num(_) | Term::Var(_) | Term::Break(_) => false,
        Term::Str(None, parts) => parts
            .iter()
            .any(|p| matches!(p, StrPart::Term(t) if reads_input(t))),
        Term::Arr(a) => a.as_deref().is_some_and(reads_input),
        // `{a}` is `{a: .a}`; `{$x}` reads the variable.
        Term::Obj(kvs) => kvs.iter().any(|(k, v)| match v {
            Some(v) => reads_input(k) || reads_input(v),
            None => !matches!(k, Term::Var(_)),
        }),
        Term::Neg(t) | Term::Label(_, t) => reads_input(t),
        // `l | r`: r sees l's outputs, not the input; `l as $x | r`: r sees the input.
        Term::BinOp(l, BinaryOp::Pipe(None), _) => reads_input(l),
        Term::BinOp(l, BinaryOp::Pipe(Some(p)), r) => {
            reads_input(l) || pattern(p) || reads_input(r)
        }
        Term::BinOp(l, _, r) => reads_input(l) || reads_input(r),
        // The update (and extract) of `reduce`/`foreach` run on the accumulator.
        Term::Fold(_, xs, p, args) => {
            reads_input(xs) || pattern(p) || args.first().is_some_and(reads_input)
        }
        Term::TryCatch(t, c) => reads_input(t) || c.as_deref().is_some_and(reads_input),
        Term::IfThenElse(its, e) => {
            its.iter().any(|(i, t)| reads_input(i) || reads_input(t))
                || e.as_deref().is_some_and(reads_input)
        }
        Term::Call(name, args) => {
            !IGNORE_INPUT.contains(&(*name, args.len())) || args.iter().any(reads_input)
        }
        Term::Path(t, path) => {
            reads_input(t)
                || path.0.iter().any(|(part, _)| match part {
                    Part::Index(i) => reads_input(i),
                    Part::Range(a, b) => a.iter().chain(b.iter()).any(reads_input),
                })
        }
    }
}

/// All `$variables` referenced in `t`, in order of first appearance.
pub(super) fn collect_vars<'s>(t: &Term<&'s str>, out: &mut Vec<&'s str>) {
    if let Term::Var(x) = t
        && !out.contains(x)
    {
        out.push(x);
    }
    children(t, &mut |c| collect_vars(c, out));
}

/// Every `$var.key` / `$var["key"]` (a literal key, escapes resolved) in `t`, in order of first
/// appearance: `(var with $, key)`.
pub(super) fn collect_keys<'s>(t: &Term<&'s str>, out: &mut Vec<(&'s str, String)>) {
    if let Term::Path(base, path) = t
        && let Term::Var(var) = **base
        && let Some((Part::Index(Term::Str(None, parts)), _)) = path.0.first()
    {
        let mut key = String::new();
        let literal = parts.iter().all(|p| match p {
            StrPart::Str(s) => {
                key.push_str(s);
                true
            }
            StrPart::Char(c) => {
                key.push(*c);
                true
            }
            StrPart::Term(_) => false,
        });
        if literal && !out.iter().any(|(v, k)| *v == var && *k == key) {
            out.push((var, key));
        }
    }
    children(t, &mut |c| collect_keys(c, out));
}

/// Every `$variable` that `t` binds itself: `as` patterns, `reduce`/`foreach` patterns and
/// `$` parameters of definitions.
pub(super) fn collect_bound<'s>(t: &Term<&'s str>, out: &mut BTreeSet<&'s str>) {
    fn pattern<'s>(p: &Pattern<&'s str>, out: &mut BTreeSet<&'s str>) {
        match p {
            Pattern::Var(x) => {
                out.insert(x);
            }
            Pattern::Arr(ps) => ps.iter().for_each(|p| pattern(p, out)),
            Pattern::Obj(kps) => kps.iter().for_each(|(_, p)| pattern(p, out)),
        }
    }
    match t {
        Term::BinOp(_, BinaryOp::Pipe(Some(p)), _) | Term::Fold(_, _, p, _) => pattern(p, out),
        Term::Def(defs, _) => {
            for d in defs {
                out.extend(d.args.iter().copied().filter(|a| a.starts_with('$')));
            }
        }
        _ => {}
    }
    children(t, &mut |c| collect_bound(c, out));
}

#[cfg(test)]
mod tests {
    use super::super::Expr;

    #[test]
    fn an_expression_that_reads_only_variables_and_literals_does_not_read_its_input() {
        for src in [
            "$workflow.input.id",
            "\"x-\" + ($context.n | tostring)",
            "{a: 1, b: $secrets.k, $task}",
            "[range(3)] | length",
            "$workflow.input.items | map(. * 2)",
            "if $context.ok then 1 else 2 end",
            "reduce $workflow.input.xs[] as $x (0; . + $x)",
            "true, null, 3",
        ] {
            let e = Expr::compile(src).expect(src);
            assert!(!e.reads_input(), "{src} reads nothing of its input");
        }
        for src in [
            ".",
            ".id",
            "length",
            "{id}",
            "$context.x + .y",
            "$workflow.input.xs[.i]",
            "@base64",
            "\"\\(.name)\"",
            "$context as $c | .a",
            "reduce .xs[] as $x (0; . + $x)",
            "def f: .; f",
            "..",
            "try $x catch .",
            "if .ok then 1 else 2 end",
        ] {
            let e = Expr::compile(src).expect(src);
            assert!(e.reads_input(), "{src} reads its input");
        }
    }
}
