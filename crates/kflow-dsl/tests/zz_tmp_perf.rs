#[test]
fn perf() {
    let hdr = "document:\n  dsl: '1.0.3'\n  namespace: t\n  name: t\n  version: '0.1.0'\n";
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut s = format!("{hdr}do:\n");
    let mut i = 0; while s.len() < 15_000_000 { s.push_str(&format!("  - t{i}:\n      wait: PT1S\n")); i += 1; }
    cases.push(("tasks", s));
    cases.push(("long scalar", format!("{hdr}do: []\nx: {}\n", "a".repeat(15_000_000))));
    cases.push(("flow list", format!("{hdr}do: []\nx: [{}1]\n", "1,".repeat(7_000_000))));
    let mut s = format!("{hdr}do:\n  - a:\n      set:\n"); let mut i = 0;
    while s.len() < 15_000_000 { s.push_str(&format!("        k{i}: v\n")); i += 1; }
    cases.push(("many keys", s));
    cases.push(("quoted", format!("{hdr}do: []\nx: \"{}\"\n", "\\u0041".repeat(2_000_000))));
    for (name, text) in cases {
        let t = std::time::Instant::now();
        let r = kflow_dsl::load(text.as_bytes());
        eprintln!("{name}: {} bytes, {:?}, ok={} {:?}", text.len(), t.elapsed(), r.is_ok(), r.err().map(|d| d.into_iter().take(2).map(|d| d.to_string()).collect::<Vec<_>>()));
    }
}
