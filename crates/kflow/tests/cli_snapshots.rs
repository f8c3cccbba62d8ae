//! The text output of the client verbs, as a user reads it: snapshots of a known state, with
//! the parts that change from run to run (ids, times) replaced by placeholders of the same
//! width, so that the snapshots also show that columns line up, and that every time is written
//! with its UTC offset (a time without one would not match the placeholder's pattern and would
//! show up in the snapshot as it is). `UPDATE_EXPECT=1` rewrites them after a deliberate change.

mod support;

use std::time::Duration;

use expect_test::{Expect, expect};
use support::{Outcome, ServerProcess, TempDir, kflow};

/// Ids and times become same-width placeholders.
fn normalize(s: &str) -> String {
    let uuid =
        regex::Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap();
    let time_ms = regex::Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d").unwrap();
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d").unwrap();
    let iso = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z").unwrap();
    let hash = regex::Regex::new(r"\b[0-9a-f]{12}\b").unwrap();
    let s = uuid.replace_all(s, "iiiiiiii-iiii-iiii-iiii-iiiiiiiiiiii");
    let s = time_ms.replace_all(&s, "YYYY-MM-DD hh:mm:ss.mmm+ZZ:ZZ");
    let s = time.replace_all(&s, "YYYY-MM-DD hh:mm:ss+ZZ:ZZ");
    let s = iso.replace_all(&s, "YYYY-MM-DDThh:mm:ssZ");
    let s = hash.replace_all(&s, "hhhhhhhhhhhh");
    // How tasks are confined depends on the machine (Landlock, user namespaces).
    let isolation = regex::Regex::new(r"(?m)^(\s*isolation: ).*$").unwrap();
    isolation
        .replace_all(&s, "${1}<this machine's>")
        .into_owned()
}

struct Env {
    server: ServerProcess,
    files: TempDir,
    _data: TempDir,
}

impl Env {
    fn cli(&self, args: &[&str]) -> Outcome {
        let o = kflow(args)
            .env("KFLOW_SERVER", &self.server.base())
            .env("TZ", "UTC")
            .timeout(Duration::from_secs(60))
            .run();
        assert_eq!(o.code, Some(0), "{}", o.describe());
        o
    }

    fn check(&self, args: &[&str], want: Expect) {
        want.assert_eq(&normalize(&self.cli(args).stdout));
    }
}

#[test]
fn every_read_verb_prints_an_aligned_table_with_zoned_times() {
    let data = TempDir::new("snap-data");
    let env = Env {
        server: ServerProcess::start(&data.path().join("kflow"), &[]),
        files: TempDir::new("snap-files"),
        _data: data,
    };
    let doc = |name: &str, version: &str, body: &str| {
        format!(
            "document:\n  dsl: '1.0.3'\n  namespace: snap\n  name: {name}\n  version: '{version}'\n{body}"
        )
    };
    for (file, text) in [
        (
            "a.yaml",
            doc("greet", "1.0.0", "do:\n  - hello:\n      set: {msg: hi}\n"),
        ),
        (
            "b.yaml",
            doc(
                "greet",
                "1.1.0",
                "do:\n  - hello:\n      set: {msg: hello}\n",
            ),
        ),
        (
            "c.yaml",
            doc(
                "a-much-longer-name",
                "0.1.0",
                "do:\n  - nap:\n      wait: {minutes: 30}\n",
            ),
        ),
    ] {
        let f = env.files.write(file, text);
        env.cli(&["apply", "-f", f.to_str().unwrap()]);
    }
    let done = env.cli(&["start", "snap/greet@1.0.0", "--wait"]);
    assert!(done.stdout.contains("hi"));
    let waiting = env
        .cli(&["start", "snap/a-much-longer-name"])
        .stdout
        .trim()
        .to_string();
    support::poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let o = env.cli(&["explain", &waiting]);
        o.stdout.contains("timer").then_some(())
    })
    .expect("the waiting instance waits on its timer");

    env.check(
        &["defs", "ls"],
        expect![[r#"
            WORKFLOW                 VERSION  DEPRECATED  REGISTERED                 HASH
            snap/a-much-longer-name  0.1.0    no          YYYY-MM-DD hh:mm:ss+ZZ:ZZ  hhhhhhhhhhhh
            snap/greet               1.1.0    no          YYYY-MM-DD hh:mm:ss+ZZ:ZZ  hhhhhhhhhhhh
            snap/greet               1.0.0    no          YYYY-MM-DD hh:mm:ss+ZZ:ZZ  hhhhhhhhhhhh
        "#]],
    );
    env.check(&["ls"], expect![[r#"
        ID                                    WORKFLOW                 VERSION  STATUS     CREATED
        iiiiiiii-iiii-iiii-iiii-iiiiiiiiiiii  snap/a-much-longer-name  0.1.0    running    YYYY-MM-DD hh:mm:ss+ZZ:ZZ
        iiiiiiii-iiii-iiii-iiii-iiiiiiiiiiii  snap/greet               1.0.0    completed  YYYY-MM-DD hh:mm:ss+ZZ:ZZ
    "#]]);
    env.check(
        &["get", &waiting],
        expect![[r#"
        ID:        iiiiiiii-iiii-iiii-iiii-iiiiiiiiiiii
        Workflow:  snap/a-much-longer-name@0.1.0
        Status:    running
        Created:   YYYY-MM-DD hh:mm:ss+ZZ:ZZ
        Waiting:   /do/0/nap on timer until YYYY-MM-DD hh:mm:ss.mmm+ZZ:ZZ
    "#]],
    );
    env.check(
        &["explain", &waiting],
        expect![[r#"
        iiiiiiii-iiii-iiii-iiii-iiiiiiiiiiii is running
          /do/0/nap: waiting on a timer until YYYY-MM-DDThh:mm:ssZ
          isolation: <this machine's>
    "#]],
    );
    env.check(
        &["history", &waiting],
        expect![[r#"
        SEQ  TIME                           KIND     SUMMARY
        1    YYYY-MM-DD hh:mm:ss.mmm+ZZ:ZZ  started  input {}
        2    YYYY-MM-DD hh:mm:ss.mmm+ZZ:ZZ  notice   workflow.started
        3    YYYY-MM-DD hh:mm:ss.mmm+ZZ:ZZ  notice   task.started /do/0/nap
    "#]],
    );
    env.check(
        &["queues"],
        expect![[r#"
            QUEUE    DEPTH  OLDEST WAIT  WORKERS  RATE LIMIT
            default  0      -            builtin  -
        "#]],
    );
    env.check(
        &["workers"],
        expect![[r#"
        ID                  QUEUES   LABELS  CAPACITY   USED  LEASES  LAST SEEN
        builtin (built-in)  default          tasks=512        0       YYYY-MM-DD hh:mm:ss+ZZ:ZZ
    "#]],
    );
    env.check(
        &["alerts"],
        expect![[r#"
        FIRED  RULE  ON  SUBJECT  DELIVERY  SUMMARY
    "#]],
    );
    env.check(
        &["whoami"],
        expect![[r#"
        admin (environment) (role admin, namespaces *)
    "#]],
    );
}
