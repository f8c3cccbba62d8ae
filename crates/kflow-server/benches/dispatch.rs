//! Critical-path-first against FIFO dispatch, simulated (virtual clock, no sleeps) over the
//! suite of `kflow_server::adaptive::sim::suite()`: 24 synthetic DAGs with known duration
//! distributions on 2 to 4 slots, each run 200 times with the same draws for both orders.
//!
//! `cargo bench -p kflow-server --bench dispatch`

use kflow_server::adaptive::sim::suite;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` builds benches; only `cargo bench` runs them
    }
    let runs = 200;
    println!(
        "| DAG | seed | tasks | slots | FIFO makespan | critical-path-first | change | bound | FIFO over bound | of it removed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut gains = Vec::new();
    let (mut over, mut removed, mut best) = (0.0, 0.0, 0.0);
    for c in suite() {
        let (fifo, cp, bound) = c.compare(runs);
        let change = (cp - fifo) / fifo * 100.0;
        gains.push(-change);
        over += fifo - bound;
        best += (fifo - bound) / fifo * 100.0;
        removed += fifo - cp;
        println!(
            "| {} | {:#x} | {} | {} | {:.2} | {:.2} | {:+.1}% | {:.2} | {:+.1}% | {} |",
            c.name,
            c.seed,
            c.dag.len(),
            c.capacity,
            fifo,
            cp,
            change,
            bound,
            (fifo - bound) / bound * 100.0,
            if fifo - bound > 1e-9 {
                format!("{:.0}%", (fifo - cp) / (fifo - bound) * 100.0)
            } else {
                "-".to_string()
            }
        );
    }
    println!(
        "\nof the time FIFO spends above the bound (the longest path, or the work spread over the slots) over the suite, critical-path-first removes {:.0}%",
        removed / over * 100.0
    );
    println!(
        "an order reaching the bound on every DAG would shorten the makespan by at most {:.1}% on average",
        best / suite().len() as f64
    );
    let mean = gains.iter().sum::<f64>() / gains.len() as f64;
    let worst = gains.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nmean makespan change over {} DAGs: -{mean:.1}% (shorter); worst DAG: {:+.1}%",
        gains.len(),
        -worst
    );
}
