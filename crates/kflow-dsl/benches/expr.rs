//! Micro-benchmark of runtime expressions: compile time, evaluation time, and the overhead of
//! kflow's metering compared with plain jaq.
//!
//! `cargo bench -p kflow-dsl --bench expr` (optimised), or
//! `cargo test -p kflow-dsl --bench expr` (unoptimised, quick).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars as JaqVars, data};
use jaq_json::Val;
use kflow_dsl::expr::{Expr, Vars};
use serde::Deserialize;
use serde_json::{Value, json};

struct OneVar(Value);

impl Vars for OneVar {
    fn var(&self, name: &str) -> Option<Cow<'_, Value>> {
        (name == "color").then_some(Cow::Borrowed(&self.0))
    }
}

/// Mean time of one call of `f`, in µs (after a warm-up of a tenth of the runs).
fn per_call(runs: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..runs.div_ceil(10) {
        f();
    }
    let start = Instant::now();
    for _ in 0..runs {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(runs)
}

/// Plain jaq: std and json definitions, no metering, no conversions.
struct Plain {
    filter: jaq_core::Filter<data::JustLut<Val>>,
}

impl Plain {
    fn new(code: &str) -> Plain {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .unwrap();
        Plain {
            filter: Compiler::default()
                .with_funs(funs)
                .compile(modules)
                .unwrap(),
        }
    }

    fn first(&self, input: &Val) -> bool {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, JaqVars::new([]));
        matches!(self.filter.id.run((ctx, input.clone())).next(), Some(Ok(_)))
    }
}

fn main() {
    let input = json!({"colors": ["blue", "green"], "id": 7, "items": [{"ok": true}, {"ok": false}, {"ok": true}]});
    let vars = OneVar(json!("red"));
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };

    let start = Instant::now();
    Expr::compile(".").unwrap();
    println!(
        "first compile (parses and analyses the prelude): {:.0} µs",
        start.elapsed().as_secs_f64() * 1e6
    );
    for src in [
        ".colors + [\"red\"]",
        "map(select(.ok)) | length",
        "def f: if . == 0 then 0 else (. - 1 | f) + 1 end; f",
    ] {
        let us = per_call(2000 / scale, || {
            black_box(Expr::compile(src).unwrap());
        });
        println!("compile {src:<55} {us:>9.2} µs");
    }
    println!();

    println!(
        "{:<58} {:>10} {:>12}",
        "filter", "kflow eval", "plain jaq run"
    );
    let cases: &[(&str, u32)] = &[
        (".colors + [\"red\"]", 100_000),
        (".colors + [$color]", 100_000),
        (".id", 100_000),
        ("{ ids: [ .id, .colors[0] ] }", 100_000),
        ("\"Hello \\(.id) \\(.colors[0])!\"", 100_000),
        (".items | map(select(.ok)) | length", 50_000),
        ("[.colors[] | ascii_upcase]", 50_000),
        ("[range(1000)] | length", 500),
        ("[range(1100)] | length", 500),
        ("reduce range(1000) as $x (0; . + $x)", 500),
        ("0 | until(. >= 1000; . + 1)", 500),
        (
            "def f: if . == 0 then 0 else (. - 1 | f) + 1 end; 5 | f",
            20_000,
        ),
        (
            "def f: if . == 0 then 0 else (. - 1 | f) + 1 end; 200 | f",
            200,
        ),
    ];
    let jaq_input = Val::deserialize(&input).unwrap();
    for (src, runs) in cases {
        let runs = (runs / scale).max(10);
        let e = Expr::compile(src).unwrap();
        let kflow = per_call(runs, || {
            black_box(e.eval(&input, &vars).unwrap());
        });
        let plain = if src.contains("$color") {
            "-".to_string()
        } else {
            let p = Plain::new(src);
            format!("{:.2} µs", per_call(runs, || assert!(p.first(&jaq_input))))
        };
        println!("{src:<58} {kflow:>7.2} µs {plain:>12}");
    }
    println!();
    // expressions longer than 512 bytes always run on a big-stack worker
    let padded = Expr::compile(&format!("{}.id", " ".repeat(600))).unwrap();
    let us = per_call(20_000 / scale, || {
        black_box(padded.eval(&input, &vars).unwrap());
    });
    println!("`.id` on a big-stack worker (worker round trip included): {us:.2} µs");
    let us = per_call(100_000 / scale, || {
        black_box(Val::deserialize(&input).unwrap());
    });
    println!("serde_json::Value -> jaq Val via serde (the input above): {us:.2} µs");
}
