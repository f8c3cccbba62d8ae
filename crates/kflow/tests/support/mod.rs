//! Helpers shared by the end-to-end tests of the `kflow` binary: running it with a timeout,
//! temporary folders, YAML docstrings, trace lines, and a local HTTP server that stands in
//! for the public services (petstore, httpbin) the conformance kit calls.
//!
//! The machine running the tests has no internet: the server answers on 127.0.0.1 with
//! behaviour modelled on the real services, and records every request it receives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The `kflow` binary built by cargo for these tests.
pub fn kflow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kflow")
}

/// The Serverless Workflow spec folder of `../shared` next to the checkout, read at run time
/// (never copied, never looked for at an absolute path).
pub fn spec_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/serverless-workflow");
    p.is_dir().then_some(p)
}

/// A test that needs something this machine lacks: says so and returns (the test passes) on
/// a user's machine, fails under `CI=true` (CI never passes by skipping).
pub fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is missing, and CI=true: CI never passes by skipping");
    }
    println!("{what} is missing: skipping");
}

// ---------------------------------------------------------------------------------------------
// Temporary folders

/// A folder under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kflow-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the folder and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// What one run of the binary did.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code; `None` when killed by a signal or by the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Outcome {
    /// stdout parsed as exactly one JSON document (surrounding whitespace allowed).
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_str::<Value>(&self.stdout).map_err(|e| {
            format!(
                "stdout is not exactly one JSON document ({e}): {}",
                clip(&self.stdout, 800)
            )
        })
    }

    /// The `--trace` lines on stderr (JSON objects with a `type`), in order.
    pub fn trace(&self) -> Vec<Value> {
        trace_lines(&self.stderr)
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit={:?} timed_out={} elapsed={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.timed_out,
            self.elapsed,
            clip(&self.stdout, 1500),
            clip(&self.stderr, 3000)
        )
    }
}

/// The admin token every test server is started with (`KFLOW_ADMIN_TOKEN`), and that the CLI
/// and [`http_request`] send unless a test says otherwise.
pub const TEST_TOKEN: &str = "kflow-test-admin-token-0123456789abcdef";

/// A builder for one invocation of `kflow`.
pub struct Kflow {
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    timeout: Duration,
    stdin: Option<String>,
}

pub fn kflow<I, S>(args: I) -> Kflow
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Kflow {
        args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        env: Vec::new(),
        timeout: Duration::from_secs(30),
        stdin: None,
    }
}

impl Kflow {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Text for the process's stdin (default: none, stdin is closed).
    pub fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_string());
        self
    }

    /// Runs the binary; a run that outlives the timeout is killed and reported as timed out.
    pub fn run(self) -> Outcome {
        let mut cmd = Command::new(kflow_bin());
        cmd.args(&self.args)
            .env_remove("KFLOW_SECRETS")
            .env_remove("KFLOW_SECRETS_FILE")
            .env("KFLOW_TOKEN", TEST_TOKEN)
            .env("KFLOW_PROFILE", "/nonexistent/kflow-test-profile")
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_command(cmd, self.stdin.as_deref(), self.timeout)
    }
}

/// Runs any command with a timeout (killed past it), collecting its output.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Outcome {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    run_command(cmd, None, timeout)
}

fn run_command(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Outcome {
    {
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn the command");
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            let _ = input.write_all(text.as_bytes());
        }
        let out_rx = drain(child.stdout.take().expect("stdout"));
        let err_rx = drain(child.stderr.take().expect("stderr"));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() > timeout => {
                    timed_out = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break None,
            }
        };
        let elapsed = start.elapsed();
        // A grandchild (a shell task) may still hold the pipes: do not wait for it forever.
        let stdout = out_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let stderr = err_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        Outcome {
            code: if timed_out {
                None
            } else {
                status.and_then(|s| s.code())
            },
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            timed_out,
            elapsed,
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

/// The JSON trace lines of a stderr text.
pub fn trace_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v.get("type").and_then(Value::as_str).is_some())
        .collect()
}

/// `FILE:LINE:COL: message` lines of a stderr text that name `file`, as (line, col, message).
pub fn diagnostics_for(stderr: &str, file: &Path) -> Vec<(u32, u32, String)> {
    let shown = file.display().to_string();
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&shown)?.strip_prefix(':')?;
            let (line, rest) = rest.split_once(':')?;
            let (col, msg) = rest.split_once(": ")?;
            let (line, col) = (line.parse().ok()?, col.parse().ok()?);
            (!msg.trim().is_empty()).then(|| (line, col, msg.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// YAML and JSON values

/// Parses a YAML (or JSON) text with YAML 1.2 booleans only (`yes`/`on` stay strings).
pub fn yaml(text: &str) -> Result<Value, String> {
    let opts = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<Value>(text, opts)
        .map_err(|e| format!("invalid YAML: {e}"))
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Whether every field of `expected` is in `actual` with an equal value (maps recursively).
pub fn json_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|w| json_subset(v, w))),
        _ => json_eq(expected, actual),
    }
}

/// The value at a dotted path (`a.b.0.c`); numeric segments index arrays.
pub fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| match cur {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// The local stand-in for petstore.swagger.io and httpbin.org

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target: path and query, as sent.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request was read (wall clock, milliseconds since the epoch).
    pub at_ms: i64,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of a query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        query_pairs(&self.target)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// An HTTP/1.1 server on 127.0.0.1 (one thread per connection, `Connection: close`).
pub struct TestServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_inner(None)
    }

    /// Like [`TestServer::start`], with `handler` consulted first for every request: `Some`
    /// answers it (status and JSON body), `None` falls back to the stand-in services. The
    /// request is recorded before the handler runs.
    pub fn start_with<F>(handler: F) -> TestServer
    where
        F: Fn(&Recorded) -> Option<(u16, Value)> + Send + Sync + 'static,
    {
        Self::start_inner(Some(Arc::new(handler)))
    }

    fn start_inner(handler: Option<Handler>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let handler = handler.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let reqs = reqs.clone();
                let handler = handler.clone();
                std::thread::spawn(move || serve_connection(conn, port, &reqs, handler.as_ref()));
            }
        });
        TestServer {
            port,
            requests,
            stop,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Points a workflow text's public service addresses at this server.
    pub fn rewrite(&self, text: &str) -> String {
        text.replace(
            "https://petstore.swagger.io",
            &format!("{}/petstore", self.base()),
        )
        .replace("https://httpbin.org", &format!("{}/httpbin", self.base()))
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn json_response(status: u16, v: &Value) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "application/json".into())],
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// A custom route of [`TestServer::start_with`].
type Handler = Arc<dyn Fn(&Recorded) -> Option<(u16, Value)> + Send + Sync>;

fn serve_connection(
    conn: TcpStream,
    port: u16,
    reqs: &Mutex<Vec<Recorded>>,
    handler: Option<&Handler>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    reqs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(req.clone());
    let resp = match handler.and_then(|h| h(&req)) {
        Some((status, body)) => json_response(status, &body),
        None => route(&req, port),
    };
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut w = write_half;
    let _ = w.write_all(head.as_bytes());
    if req.method != "HEAD" {
        let _ = w.write_all(&resp.body);
    }
    let _ = w.flush();
    let _ = w.shutdown(std::net::Shutdown::Both);
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n.min(64 << 20), 0);
        r.read_exact(&mut body).ok()?;
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Some(Recorded {
        method,
        target,
        headers,
        body,
        at_ms,
    })
}

/// Decodes `%XX` escapes (and `+` as a space in query strings).
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if plus_is_space && b[i] == b'+' {
            b' '
        } else {
            b[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as (name, value) pairs, decoded.
fn query_pairs(target: &str) -> Vec<(String, String)> {
    let Some((_, q)) = target.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The petstore's pets (a small, fixed store).
fn pets() -> Vec<Value> {
    let pet = |id: i64, name: &str, category: &str, status: &str| {
        json!({
            "id": id,
            "category": { "id": 1, "name": category },
            "name": name,
            "photoUrls": [format!("https://example.com/photos/{id}.jpg")],
            "tags": [{ "id": id, "name": category }],
            "status": status
        })
    };
    vec![
        pet(1, "Rex", "dogs", "available"),
        pet(2, "Felix", "cats", "available"),
        pet(3, "Nemo", "fish", "pending"),
        pet(4, "Polly", "birds", "sold"),
    ]
}

fn route(req: &Recorded, port: u16) -> Response {
    let path = req.path().to_string();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|x| percent_decode(x, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["petstore", "v2", "swagger.json"]) => json_response(200, &swagger(port)),
        ("GET", ["petstore", "v2", "pet", "findByStatus"]) => {
            let wanted: Vec<String> = query_pairs(&req.target)
                .into_iter()
                .filter(|(k, _)| k == "status")
                .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
                .collect();
            let found: Vec<Value> = pets()
                .into_iter()
                .filter(|p| wanted.iter().any(|w| p["status"] == w.as_str()))
                .collect();
            json_response(200, &Value::Array(found))
        }
        ("GET", ["petstore", "v2", "pet", id]) => match id.parse::<i64>() {
            Ok(n) => match pets().into_iter().find(|p| p["id"] == n) {
                Some(p) => json_response(200, &p),
                None => json_response(
                    404,
                    &json!({ "code": 1, "type": "error", "message": "Pet not found" }),
                ),
            },
            Err(_) => json_response(
                404,
                &json!({ "code": 404, "type": "unknown", "message": format!("java.lang.NumberFormatException: For input string: \"{id}\"") }),
            ),
        },
        (_, ["petstore", ..]) => json_response(
            404,
            &json!({ "code": 404, "type": "unknown", "message": "HTTP 404 Not Found" }),
        ),
        ("GET", ["httpbin", "basic-auth", user, pass]) => {
            let expected = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
            if req.header("authorization") == Some(expected.as_str()) {
                json_response(200, &json!({ "authenticated": true, "user": user }))
            } else {
                Response {
                    status: 401,
                    headers: vec![("WWW-Authenticate", "Basic realm=\"Fake Realm\"".into())],
                    body: Vec::new(),
                }
            }
        }
        (_, ["httpbin", "status", code]) => Response {
            status: code.parse().unwrap_or(400),
            headers: vec![("Content-Type", "text/plain".into())],
            body: Vec::new(),
        },
        (_, ["httpbin", "anything", ..])
        | ("GET", ["httpbin", "get"])
        | ("POST", ["httpbin", "post"]) => {
            let mut args = BTreeMap::new();
            for (k, v) in query_pairs(&req.target) {
                args.insert(k, Value::String(v));
            }
            let headers: serde_json::Map<String, Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let data = String::from_utf8_lossy(&req.body).into_owned();
            let parsed = serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null);
            json_response(
                200,
                &json!({
                    "args": args, "data": data, "headers": headers, "json": parsed,
                    "method": req.method, "url": format!("http://127.0.0.1:{port}{}", req.target)
                }),
            )
        }
        _ => json_response(404, &json!({ "error": "not found", "path": path })),
    }
}

/// A Swagger 2.0 description of the stand-in petstore (the two operations the tests use).
fn swagger(port: u16) -> Value {
    let pet_ref = json!({ "$ref": "#/definitions/Pet" });
    json!({
        "swagger": "2.0",
        "info": { "title": "Petstore stand-in for the kflow tests", "version": "1.0.0" },
        "host": format!("127.0.0.1:{port}"),
        "basePath": "/petstore/v2",
        "schemes": ["http"],
        "paths": {
            "/pet/findByStatus": { "get": {
                "tags": ["pet"],
                "summary": "Finds pets by status",
                "operationId": "findPetsByStatus",
                "produces": ["application/json"],
                "parameters": [{
                    "name": "status", "in": "query", "required": true,
                    "type": "array", "items": { "type": "string", "enum": ["available", "pending", "sold"] },
                    "collectionFormat": "multi"
                }],
                "responses": {
                    "200": { "description": "the pets", "schema": { "type": "array", "items": pet_ref } },
                    "400": { "description": "invalid status value" }
                }
            }},
            "/pet/{petId}": { "get": {
                "tags": ["pet"],
                "summary": "Finds a pet by id",
                "operationId": "getPetById",
                "produces": ["application/json"],
                "parameters": [{ "name": "petId", "in": "path", "required": true, "type": "integer", "format": "int64" }],
                "responses": {
                    "200": { "description": "the pet", "schema": pet_ref },
                    "404": { "description": "no such pet" }
                }
            }}
        },
        "definitions": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "id": { "type": "integer", "format": "int64" },
                    "name": { "type": "string" },
                    "status": { "type": "string", "enum": ["available", "pending", "sold"] }
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// A plain HTTP/1.1 client (for the kflow server's REST API)

/// A response of [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                clip(&self.text(), 500)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request to `base` (`http://HOST:PORT`) with `Connection: close`; `Err` when the server
/// could not be reached or the connection broke before a whole response arrived.
pub fn http_request(
    method: &str,
    base: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    http_request_with(method, base, path, &[], body, timeout)
}

/// [`http_request`] with extra request headers.
pub fn http_request_with(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let addr: std::net::SocketAddr = host
        .parse()
        .map_err(|e| format!("bad address {host}: {e}"))?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("connect {host}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        head.push_str(&format!("Authorization: Bearer {TEST_TOKEN}\r\n"));
    }
    if let Some((ct, b)) = body {
        head.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some((_, b)) = body {
        out.extend_from_slice(b);
    }
    conn.write_all(&out)
        .map_err(|e| format!("send to {host}: {e}"))?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read from {host}: {e}"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP status line from {host}: {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)
            .map_err(|e| format!("read from {host}: {e}"))?
            == 0
        {
            return Err(format!("{host} closed the connection in the headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            headers.push((k.clone(), v.to_string()));
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    let broke = |e: std::io::Error| format!("read the body from {host}: {e}");
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(broke)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size from {host}: {size:?}"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(broke)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(broke)?;
    } else if method != "HEAD" && status != 204 && status != 304 {
        r.read_to_end(&mut body).map_err(broke)?;
    }
    Ok(HttpResponse {
        status,
        body,
        headers,
    })
}

/// Registers a workflow document (YAML) with the server at `base`; panics unless created.
pub fn register(base: &str, doc: &str) {
    let r = http_request(
        "POST",
        base,
        "/api/v1/definitions",
        Some(("application/yaml", doc.as_bytes())),
        Duration::from_secs(30),
    )
    .expect("register a workflow");
    assert_eq!(r.status, 201, "registering: {}\n{doc}", r.text());
}

/// Starts instances `prefix-N` of namespace/name (N in `range`, input `{"i": N}`), each
/// waited for; panics unless each is created.
pub fn start_and_wait(base: &str, ns: &str, name: &str, prefix: &str, range: std::ops::Range<u64>) {
    for i in range {
        let body = json!({"namespace": ns, "name": name, "id": format!("{prefix}-{i}"), "input": {"i": i}, "wait": true});
        let (code, v) = post_json(base, "/api/v1/instances", &body).expect("start");
        assert!(code == 201 || code == 200, "{v}");
    }
}

/// GET `base` + `path` and parse the JSON answer (any status).
pub fn get_json(base: &str, path: &str) -> Result<(u16, Value), String> {
    let r = http_request("GET", base, path, None, Duration::from_secs(30))?;
    Ok((r.status, r.json()?))
}

/// POST a JSON body to `base` + `path` and parse the JSON answer (any status).
pub fn post_json(base: &str, path: &str, body: &Value) -> Result<(u16, Value), String> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let r = http_request(
        "POST",
        base,
        path,
        Some(("application/json", &bytes)),
        Duration::from_secs(30),
    )?;
    Ok((r.status, r.json()?))
}

// ---------------------------------------------------------------------------------------------
// `kflow server` as a child process

/// A port that was free a moment ago on 127.0.0.1 (another process may still take it: callers
/// retry on a bind failure).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A `kflow server` child on 127.0.0.1 with its own data folder; stdout and stderr of every
/// incarnation are kept (see [`ServerProcess::log`]). Killed on drop.
pub struct ServerProcess {
    pub port: u16,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    child: Option<std::process::Child>,
    log: Arc<Mutex<String>>,
    ready: Option<mpsc::Receiver<bool>>,
    incarnation: usize,
    /// Started with `KFLOW_ADMIN_TOKEN` = [`TEST_TOKEN`].
    env_token: bool,
    /// More environment for every incarnation.
    env: Vec<(String, String)>,
}

const LISTENING: &str = "kflow server listening on";

impl ServerProcess {
    /// Starts a server on a free port (another port is tried when the bind fails) and waits
    /// until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with(data_dir, extra, true)
    }

    /// [`start`](Self::start), with or without the test admin token in the environment.
    pub fn start_with(data_dir: &Path, extra: &[&str], env_token: bool) -> ServerProcess {
        let mut s = ServerProcess {
            env_token,
            port: 0,
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            ready: None,
            incarnation: 0,
            env: Vec::new(),
        };
        for _ in 0..10 {
            s.port = free_port();
            if s.spawn_and_wait(Duration::from_secs(60)).is_ok() {
                return s;
            }
        }
        panic!("the kflow server did not start\n{}", s.log_tail(4000));
    }

    /// Spawns a server on a free port with `env` and does not wait for it to listen (a
    /// standby of a PostgreSQL cluster listens only once it is active): see
    /// [`wait_ready`](Self::wait_ready).
    pub fn spawn_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut s = ServerProcess {
            env_token: true,
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            ready: None,
            incarnation: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn();
        s
    }

    /// Sets (`Some`) or removes (`None`) a variable of the next incarnations' environment.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Spawns the next incarnation (same port and data) without waiting.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "respawn: the server is still running");
        self.spawn();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) through `kill`.
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status();
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the server incarnations printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn log_tail(&self, max: usize) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(max);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    /// Spawns one incarnation on `self.port` without waiting for it.
    fn spawn(&mut self) {
        self.incarnation += 1;
        let mut cmd = Command::new(kflow_bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra)
            .env_remove("KFLOW_SECRETS")
            .env_remove("KFLOW_SECRETS_FILE")
            .env(
                "KFLOW_ADMIN_TOKEN",
                if self.env_token { TEST_TOKEN } else { "" },
            )
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kflow server");
        let (tx, rx) = mpsc::channel();
        let n = self.incarnation;
        for (stream, tx) in [
            (
                Box::new(child.stderr.take().expect("stderr")) as Box<dyn Read + Send>,
                Some(tx),
            ),
            (
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
                None,
            ),
        ] {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    // Logged before the ready signal: a test that reads the log once the
                    // server listens finds the line.
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&format!("[server #{n}] {line}\n"));
                    // Each time: a cluster node listens again when it becomes active again.
                    if line.contains(LISTENING) {
                        if let Some(tx) = &tx {
                            let _ = tx.send(true);
                        }
                    }
                }
                if let Some(tx) = &tx {
                    let _ = tx.send(false);
                }
            });
        }
        self.child = Some(child);
        self.ready = Some(rx);
    }

    /// Waits until the current incarnation listens; `Err` when it exited or timed out.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(rx) = &self.ready else {
            return Err("no server process".into());
        };
        match rx.recv_timeout(timeout) {
            Ok(true) => Ok(()),
            Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Err(format!(
                    "the server exited before listening\n{}",
                    self.log_tail(2000)
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("the server did not listen within {timeout:?}"))
            }
        }
    }

    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), String> {
        self.spawn();
        self.wait_ready(timeout)
    }

    /// Starts the server again on the same port and data folder (a few tries when the port is
    /// still taken, then a new port) and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the server is still running");
        for attempt in 0..40 {
            if attempt == 30 {
                self.port = free_port();
            }
            match self.spawn_and_wait(Duration::from_secs(60)) {
                Ok(()) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        panic!("the kflow server did not restart\n{}", self.log_tail(4000));
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (through `kill`, the workspace forbids `unsafe`).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits for the server to exit; `None` (still running) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut()?;
            match c.try_wait() {
                Ok(Some(s)) => {
                    self.child = None;
                    return Some(s);
                }
                Ok(None) if start.elapsed() > timeout => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every `every` until it returns `Some`, or `None` after `timeout`.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// Several `kflow server` nodes on one PostgreSQL database

/// Server nodes sharing one database: one active (it listens), the others standing by.
pub struct Cluster {
    pub nodes: Vec<ServerProcess>,
    /// How long an adoption may take at most after a node stopped renewing (the test's lease,
    /// a renewal period, slack).
    pub takeover_max: Duration,
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

impl Cluster {
    pub fn new(takeover_max: Duration) -> Cluster {
        Cluster {
            nodes: Vec::new(),
            takeover_max,
        }
    }

    /// Spawns one more node and waits until it has joined and listens.
    pub fn spawn(&mut self, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> usize {
        self.nodes
            .push(ServerProcess::spawn_with_env(data_dir, args, env));
        let i = self.nodes.len() - 1;
        self.wait_joined(i, 1);
        i
    }

    /// The node ids node `i` joined with (one per term), oldest first.
    pub fn ids(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .log()
            .lines()
            .filter(|l| l.contains("joined the cluster"))
            .filter_map(|l| field(l, "node").map(str::to_string))
            .collect()
    }

    /// Waits until node `i` has joined `terms` times in all and listens; its newest id.
    pub fn wait_joined(&mut self, i: usize, terms: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ids(i).len() < terms {
            assert!(
                Instant::now() < deadline,
                "node {i} did not join\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes[i]
            .wait_ready(Duration::from_secs(30))
            .expect("the node listens");
        self.ids(i).pop().expect("joined")
    }

    /// Waits until another node adopted what node id `from` left; the adopter's index and how
    /// long it took since `since`.
    pub fn wait_adopted(&self, from: &str, since: Instant) -> (usize, Duration) {
        let deadline = since + self.takeover_max + Duration::from_secs(20);
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.pid().is_some()
                    && n.log().lines().any(|l| {
                        l.contains("of a node whose lease lapsed") && field(l, "from") == Some(from)
                    })
                {
                    return (i, since.elapsed());
                }
            }
            assert!(
                Instant::now() < deadline,
                "nobody adopted the instances of {from}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of node `i`: another node adopts its instances, and `i` comes back (a new
    /// node); the adopter's index and how long the adoption took.
    pub fn kill_and_adopt(&mut self, i: usize) -> (usize, Duration) {
        let id = self.ids(i).pop().expect("node i joined");
        let terms = self.ids(i).len();
        let at = Instant::now();
        self.nodes[i].kill9();
        let (next, took) = self.wait_adopted(&id, at);
        self.nodes[i].respawn();
        self.wait_joined(i, terms + 1);
        (next, took)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i}\n{}", n.log_tail(3000)))
            .collect()
    }
}

/// A TCP forwarder on loopback that a test can cut: every connection through it closed at
/// once (a database restarting, a proxy dropping its connections), and new ones refused for a
/// while.
pub struct TcpProxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
    refuse: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    pub fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, r2, s2, target) = (
            conns.clone(),
            refuse.clone(),
            stop.clone(),
            target.to_string(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if r2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        c2.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                }
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        TcpProxy {
            port,
            conns,
            refuse,
            stop,
        }
    }

    /// Closes every connection through the proxy now.
    pub fn sever(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Refuses (closes at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.sever();
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// What a [`struggling_service`] saw.
#[derive(Default)]
pub struct Struggling {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    /// The most calls at once after the first `warm_up` were served.
    pub most_late: AtomicUsize,
}

/// A service that answers in 20 ms up to `well` calls at once and slows down beyond, with the
/// square of the excess (as one short of memory or locks does); only at `path` when given.
pub fn struggling_service(
    path: Option<&'static str>,
    well: usize,
    warm_up: usize,
) -> (TestServer, Arc<Struggling>) {
    let seen = Arc::new(Struggling::default());
    let s = seen.clone();
    let server = TestServer::start_with(move |r| {
        if path.is_some_and(|p| r.path() != p) {
            return None;
        }
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if s.served.load(Ordering::SeqCst) >= warm_up {
            s.most_late.fetch_max(now, Ordering::SeqCst);
        }
        let over = (now as f64 / well as f64).max(1.0);
        std::thread::sleep(Duration::from_millis((20.0 * over * over) as u64));
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        s.served.fetch_add(1, Ordering::SeqCst);
        Some((200, json!({"ok": true})))
    });
    (server, seen)
}
