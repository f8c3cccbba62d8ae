//! Security through the binary: the first start's admin token, tokens from the CLI, `kflow
//! login`'s profile file, the audit trail verified after an edit under the server, and the
//! refusals at start (no authentication or no TLS where that is unsafe).

mod support;

use std::time::Duration;

use support::{ServerProcess, TempDir, kflow};

/// `kflow ARGS` against `base` with `token` (none: no token at all).
fn as_token(base: &str, token: Option<&str>, args: &[&str]) -> support::Outcome {
    kflow(args)
        .env("KFLOW_SERVER", base)
        .env("KFLOW_TOKEN", token.unwrap_or(""))
        .timeout(Duration::from_secs(60))
        .run()
}

fn token_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| w.starts_with("kf_"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-')
                .to_string()
        })
}

/// Registers a workflow document, asserting success.
fn register(base: &str, doc: &str) {
    let r = support::http_request(
        "POST",
        base,
        "/api/v1/definitions",
        Some(("application/yaml", doc.as_bytes())),
        Duration::from_secs(30),
    )
    .expect("register");
    assert!(r.status < 300, "{}", r.text());
}

/// Whether any file of a data directory (the database, its WAL, the key) holds `needle`.
fn data_holds(dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(dir)
        .expect("data dir")
        .flatten()
        .map(|f| std::fs::read(f.path()).unwrap_or_default())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[test]
fn the_first_start_prints_an_admin_token_once_and_the_cli_manages_tokens() {
    let dir = TempDir::new("sec-first");
    let server = ServerProcess::start_with(dir.path(), &[], false);
    let base = server.base();
    let log = server.log();
    let admin = token_in(&log).unwrap_or_else(|| panic!("no admin token printed:\n{log}"));

    // Without a token: refused, and the message says how to get one.
    let o = as_token(&base, None, &["ls"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains("Authorization") || o.stderr.contains("token"),
        "{}",
        o.describe()
    );

    let o = as_token(&base, Some(&admin), &["whoami"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.stdout.contains("role admin"), "{}", o.describe());

    // A narrower token, created and used from the CLI.
    let o = as_token(
        &base,
        Some(&admin),
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--namespace",
            "team",
            "--expires",
            "30d",
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.describe());
    let ci = token_in(&o.stdout).expect("the new token");
    let o = as_token(&base, Some(&ci), &["ls"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    let o = as_token(&base, Some(&ci), &["token", "ls"]);
    assert_eq!(
        o.code,
        Some(1),
        "a viewer cannot list tokens: {}",
        o.describe()
    );
    let o = as_token(&base, Some(&admin), &["token", "ls"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        o.stdout.contains("ci") && o.stdout.contains("viewer"),
        "{}",
        o.stdout
    );
    let secret = ci
        .strip_prefix("kf_")
        .and_then(|t| t.split_once('_'))
        .map(|(_, s)| s)
        .unwrap();
    assert!(
        !o.stdout.contains(secret),
        "token ls shows a secret: {}",
        o.stdout
    );
    let o = as_token(&base, Some(&admin), &["token", "revoke", "ci"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    let o = as_token(&base, Some(&ci), &["ls"]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("revoked"), "{}", o.describe());

    // The printed token is nowhere in the data directory.
    assert!(!data_holds(
        dir.path(),
        admin
            .strip_prefix("kf_")
            .and_then(|t| t.split_once('_'))
            .map(|(_, s)| s)
            .unwrap()
    ));

    // The audit trail holds all this, and verifies.
    let o = as_token(&base, Some(&admin), &["audit", "ls", "--action", "tokens."]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        o.stdout.contains("tokens.create") && o.stdout.contains("tokens.revoke"),
        "{}",
        o.stdout
    );
    let o = as_token(&base, Some(&admin), &["audit", "verify"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.stdout.contains("intact"), "{}", o.stdout);
    let head = o
        .stdout
        .split_whitespace()
        .last()
        .expect("head SEQ:HASH")
        .to_string();

    // Edited under the server: verify names the entry and fails.
    let db = dir.path().join("kflow.db");
    let edit = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
        .status();
    match edit {
        Ok(s) if s.success() => {
            let o = as_token(&base, Some(&admin), &["audit", "verify", "--head", &head]);
            assert_eq!(o.code, Some(1), "{}", o.describe());
            assert!(o.stdout.contains("BROKEN at entry 2"), "{}", o.stdout);
        }
        _ if std::env::var_os("CI").is_some() => panic!("sqlite3 is needed under CI"),
        _ => eprintln!("skipped the edit: no sqlite3 command on this machine"),
    }
}

#[test]
fn login_writes_a_private_profile_and_a_readable_one_is_refused() {
    let dir = TempDir::new("sec-login");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    let profile = dir.path().join("profile").join("token");
    let profile_s = profile.to_str().unwrap();
    let o = kflow(["login"])
        .env("KFLOW_SERVER", &base)
        .env("KFLOW_TOKEN", "")
        .env("KFLOW_PROFILE", profile_s)
        .stdin(&format!("{}\n", support::TEST_TOKEN))
        .run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&profile)
        .expect("profile")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let whoami = || {
        kflow(["whoami"])
            .env("KFLOW_SERVER", &base)
            .env("KFLOW_TOKEN", "")
            .env("KFLOW_PROFILE", profile_s)
            .run()
    };
    let o = whoami();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = whoami();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("chmod 600"), "{}", o.describe());
    // A wrong token is not saved.
    let other = dir.path().join("other");
    let o = kflow(["login"])
        .env("KFLOW_SERVER", &base)
        .env("KFLOW_TOKEN", "")
        .env("KFLOW_PROFILE", other.to_str().unwrap())
        .stdin("kf_0000_wrong\n")
        .run();
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(!other.exists());
}

#[test]
fn unsafe_listening_is_refused_at_start_with_the_reason() {
    let dir = TempDir::new("sec-listen");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (args, needle) in [
        (vec!["--listen", "0.0.0.0:0"], "TLS"),
        (
            vec![
                "--listen",
                "0.0.0.0:0",
                "--insecure-no-auth",
                "--insecure-no-tls",
            ],
            "loopback",
        ),
    ] {
        let o = kflow(["server", "--data-dir", data])
            .args(&args)
            .timeout(Duration::from_secs(30))
            .run();
        assert_eq!(o.code, Some(2), "{args:?}: {}", o.describe());
        assert!(o.stderr.contains(needle), "{args:?}: {}", o.describe());
    }
    // The environment switch reads like the flag (`1`, as scripts write it).
    let o = kflow(["server", "--data-dir", data])
        .args(["--listen", "0.0.0.0:0", "--insecure-no-tls"])
        .env("KFLOW_INSECURE_NO_AUTH", "1")
        .timeout(Duration::from_secs(30))
        .run();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("loopback"), "{}", o.describe());
    // Without authentication on loopback: allowed, with a warning, and says so.
    let server = ServerProcess::start_with(dir.path(), &["--insecure-no-auth"], false);
    assert!(
        server.log().contains("authentication is off"),
        "{}",
        server.log()
    );
    let o = as_token(&server.base(), None, &["whoami"]);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.stdout.contains("without authentication"), "{}", o.stdout);
}

#[test]
fn namespace_secrets_are_sealed_used_by_their_namespace_only_and_redacted() {
    use serde_json::json;
    const VALUE: &str = "tok-9f8e7d6c5b4a-sealed";
    let dir = TempDir::new("sec-secrets");
    let server = ServerProcess::start(dir.path(), &[]);
    let base = server.base();
    let service = support::TestServer::start_with(|_| Some((200, json!({"ok": true}))));
    let o = kflow(["secret", "set", "team", "token"])
        .env("KFLOW_SERVER", &base)
        .stdin(&format!("{VALUE}\n"))
        .run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    let o = kflow(["secret", "ls"]).env("KFLOW_SERVER", &base).run();
    assert!(
        o.stdout.contains("team") && o.stdout.contains("token"),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains(VALUE));

    let doc = |ns: &str| {
        format!(
            "document: {{dsl: '1.0.0', namespace: {ns}, name: use, version: '1.0.0'}}\n\
             use: {{secrets: [token]}}\n\
             do:\n\
             \x20 - call:\n\
             \x20     call: http\n\
             \x20     with:\n\
             \x20       method: get\n\
             \x20       endpoint: {}/svc\n\
             \x20       headers: {{x-token: '${{ $secrets.token }}'}}\n\
             \x20 - echo:\n\
             \x20     run:\n\
             \x20       shell:\n\
             \x20         command: 'echo \"got $1\"'\n\
             \x20         arguments: ['${{ $secrets.token }}']\n\
             \x20 - out:\n\
             \x20     set: {{leaked: '${{ $secrets.token }}', echoed: '${{ . }}'}}\n",
            service.base()
        )
    };
    // A workflow that only sends the secret (in a header): nothing of it reaches the database
    // files, WAL included: the call's work row is sealed, the answer does not echo it.
    let quiet = format!(
        "document: {{dsl: '1.0.0', namespace: team, name: quiet, version: '1.0.0'}}\n\
         use: {{secrets: [token]}}\n\
         do:\n\
         \x20 - call:\n\
         \x20     call: http\n\
         \x20     with:\n\
         \x20       method: get\n\
         \x20       endpoint: {}/svc\n\
         \x20       headers: {{authorization: '${{ \"Bearer \" + $secrets.token }}'}}\n",
        service.base()
    );
    register(&base, &quiet);
    let (_, done) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "team", "name": "quiet", "wait": true, "wait_seconds": 60}),
    )
    .expect("start");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        !data_holds(dir.path(), VALUE),
        "the secret is in the database files"
    );
    let seen: Vec<_> = service
        .requests()
        .iter()
        .map(|r| r.headers.clone())
        .collect();
    assert!(
        seen.iter().any(|h| h
            .iter()
            .any(|(k, v)| k == "authorization" && v.ends_with(VALUE))),
        "the call did not carry the secret: {seen:?}"
    );

    for ns in ["team", "ops"] {
        register(&base, &doc(ns));
    }
    let (_, done) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "team", "name": "use", "wait": true, "wait_seconds": 60}),
    )
    .expect("start");
    assert_eq!(done["status"], "completed", "{done}");
    // It was used: the service got it.
    let seen = service.requests();
    assert!(
        seen.iter()
            .any(|r| r.headers.iter().any(|(k, v)| k == "x-token" && v == VALUE)),
        "the call did not carry the secret"
    );
    // And nothing the API shows has it.
    assert_eq!(done["output"]["leaked"], "***", "{done}");
    let text = done.to_string();
    assert!(!text.contains(VALUE), "{text}");
    let id = done["id"].as_str().unwrap();
    let (_, history) =
        support::get_json(&base, &format!("/api/v1/instances/{id}/history")).expect("history");
    assert!(!history.to_string().contains(VALUE), "{history}");
    assert!(history.to_string().contains("got ***"), "{history}");
    // The live stream of the (finished) instance: its history, then its end.
    let stream = support::http_request_with(
        "GET",
        &base,
        &format!("/api/v1/instances/{id}/watch"),
        &[("accept", "text/event-stream")],
        None,
        Duration::from_secs(10),
    )
    .expect("watch");
    let events = stream.text();
    assert!(events.contains("event: end"), "{events}");
    assert!(
        events.contains("got ***") && !events.contains(VALUE),
        "{events}"
    );
    // Another namespace does not have it.
    let (_, other) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "ops", "name": "use", "wait": true, "wait_seconds": 60}),
    )
    .expect("start");
    assert_eq!(other["status"], "faulted", "{other}");
    assert!(
        other["error"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not configured"),
        "{other}"
    );
    // Nothing the server printed has it.
    assert!(!server.log().contains(VALUE), "{}", server.log());
    // At rest: the secrets table holds ciphertext; the key file is private.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("master.key");
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg(dir.path().join("kflow.db"))
        .arg("SELECT namespace || '/' || name || ' ' || ciphertext FROM secrets")
        .output()
    {
        let rows = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(rows.contains("team/token"), "{rows}");
        assert!(!rows.contains(VALUE), "{rows}");
    }
}

#[test]
fn the_api_over_tls_is_verified_by_the_cli_with_a_given_ca() {
    let dir = TempDir::new("sec-tls");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let (csr, ext) = (dir.path().join("leaf.csr"), dir.path().join("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let p = |x: &std::path::Path| x.to_str().unwrap().to_string();
    let steps: Vec<Vec<String>> = vec![
        // A CA, and a server certificate it signs for 127.0.0.1.
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kflow test CA",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([p(&ca_key), "-out".into(), p(&ca)])
        .collect(),
        [
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([p(&key), "-out".into(), p(&csr)])
        .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial", "-in"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                p(&csr),
                "-CA".into(),
                p(&ca),
                "-CAkey".into(),
                p(&ca_key),
                "-out".into(),
                p(&cert),
                "-extfile".into(),
                p(&ext),
            ])
            .collect(),
    ];
    for args in steps {
        match std::process::Command::new("openssl").args(&args).output() {
            Ok(o) if o.status.success() => {}
            _ if std::env::var_os("CI").is_some() => {
                panic!("openssl is needed under CI ({args:?})")
            }
            _ => {
                eprintln!("skipped: no working openssl command to make test certificates");
                return;
            }
        }
    }
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.log().contains("listening on https://"),
        "{}",
        server.log()
    );
    let https = format!("https://127.0.0.1:{}", server.port);
    let o = kflow(["whoami", "--ca-file", ca.to_str().unwrap()])
        .env("KFLOW_SERVER", &https)
        .run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.stdout.contains("role admin"), "{}", o.describe());
    // Without the CA the certificate is not trusted; plain HTTP gets no API.
    let o = kflow(["whoami"]).env("KFLOW_SERVER", &https).run();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    let plain = format!("http://127.0.0.1:{}", server.port);
    let o = kflow(["whoami"]).env("KFLOW_SERVER", &plain).run();
    assert_ne!(o.code, Some(0), "{}", o.describe());
    // A bad key file is refused at start, naming it.
    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
    let o = kflow(["server", "--data-dir"])
        .arg(dir.path().join("data2"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(dir.path().join("bad.pem"))
        .run();
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("--tls-key"), "{}", o.describe());
}

#[test]
fn with_data_encrypted_at_rest_nothing_of_a_secret_reaches_the_files_and_a_restart_replays() {
    use serde_json::json;
    const VALUE: &str = "echoed-secret-5d4c3b2a1f";
    let dir = TempDir::new("sec-at-rest");
    let config = dir.path().join("kflow.yaml");
    std::fs::write(&config, "encrypt_data: true\n").unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let base = server.base();
    let o = kflow(["secret", "set", "team", "token"])
        .env("KFLOW_SERVER", &base)
        .stdin(VALUE)
        .run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    // The secret goes in as input, comes back from a shell step, waits across a kill -9.
    let doc = "document: {dsl: '1.0.0', namespace: team, name: echo, version: '1.0.0'}\n\
               use: {secrets: [token]}\n\
               do:\n\
               \x20 - echo:\n\
               \x20     run:\n\
               \x20       shell:\n\
               \x20         command: 'echo \"got $1\"'\n\
               \x20         arguments: ['${ $secrets.token }']\n\
               \x20 - pause:\n\
               \x20     wait: {seconds: 2}\n\
               \x20 - out:\n\
               \x20     set: {said: '${ $workflow.input.note }', ok: true}\n";
    register(&base, &doc);
    let (code, started) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "team", "name": "echo", "input": {"note": "plain input text 7e6f"}}),
    )
    .expect("start");
    assert_eq!(code, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(600));
    server.kill9();
    assert!(
        !data_holds(&data, VALUE),
        "the secret is in the database files"
    );
    assert!(
        !data_holds(&data, "plain input text 7e6f"),
        "the input is in the database files"
    );
    server.restart();
    let base = server.base();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, v) = support::get_json(&base, &format!("/api/v1/instances/{id}")).expect("get");
        if v["status"] != "running" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "not finished: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["said"], "plain input text 7e6f", "{done}");
    let (_, history) =
        support::get_json(&base, &format!("/api/v1/instances/{id}/history")).expect("history");
    assert!(history.to_string().contains("got ***"), "{history}");
}

#[test]
fn db_encrypt_seals_old_data_in_place_and_the_server_still_reads_it() {
    use serde_json::json;
    const INPUT: &str = "plain-old-input-4a3b2c";
    let dir = TempDir::new("sec-db-encrypt");
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let base = server.base();
    let doc = "document: {dsl: '1.0.0', namespace: team, name: keep, version: '1.0.0'}\n\
               do:\n  - keep:\n      set: {kept: '${ $workflow.input.x }'}\n";
    register(&base, &doc);
    let (_, done) = support::post_json(
        &base,
        "/api/v1/instances",
        &json!({"namespace": "team", "name": "keep", "input": {"x": INPUT}, "wait": true}),
    )
    .expect("start");
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["id"].as_str().unwrap().to_string();
    server.kill9();
    let files = |needle: &str| data_holds(&data, needle);
    assert!(files(INPUT), "the old data should be in clear before");
    let o = kflow(["db", "encrypt", "--data-dir", data.to_str().unwrap()]).run();
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(o.stdout.contains("sealed"), "{}", o.stdout);
    assert!(!files(INPUT), "db encrypt left the data in clear");
    let again = kflow(["db", "encrypt", "--data-dir", data.to_str().unwrap()]).run();
    assert!(
        again.stdout.contains("sealed 0 payloads"),
        "{}",
        again.stdout
    );
    server.restart();
    let (_, v) =
        support::get_json(&server.base(), &format!("/api/v1/instances/{id}")).expect("get");
    assert_eq!(v["input"]["x"], INPUT, "{v}");
    assert_eq!(v["output"]["kept"], INPUT, "{v}");
}
