//! What the benches with real processes share: a local endpoint, the `kflow` processes they
//! start, and a small API client.

#![allow(dead_code)] // each bench uses part of it

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A local HTTP endpoint answering `{"ok":true}` after `delay_ms`, or after the number of ms a
/// path `/sleep/MS` names. One thread per connection, so answers overlap.
pub fn answer_server(delay_ms: u64) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let ms = path
                    .strip_prefix("/sleep/")
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(delay_ms);
                if ms > 0 {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                let body = b"{\"ok\":true}";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            });
        }
    });
    port
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_181)
}

/// A `kflow` process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The admin token bench servers start with; workers and the client use it.
pub const TOKEN: &str = "kflow-bench-admin-token-0123456789abcdef";

pub fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_kflow"))
            .args(args)
            .env("KFLOW_ADMIN_TOKEN", TOKEN)
            .env("KFLOW_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kflow"),
    )
}

/// `kflow server` on a fresh data directory (with `config`, YAML, when given), once it answers.
pub async fn server(tag: &str, config: Option<&str>) -> (Proc, Client, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kflow-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.join("data").to_string_lossy().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--data-dir", &data, "--listen", &listen];
    let config_path = dir.join("kflow.yaml").to_string_lossy().to_string();
    if let Some(c) = config {
        std::fs::write(&config_path, c).expect("config");
        args.extend(["--config", &config_path]);
    }
    let proc = spawn(&args);
    let c = Client::new(base);
    for _ in 0..200 {
        if c.http
            .get(format!("{}/healthz", c.base))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proc, c, dir)
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    /// A client of `base` sending the bench token.
    pub fn new(base: String) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("a header"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("an HTTP client");
        Client { http, base }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("post");
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get");
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn register(&self, text: String) -> bool {
        let r = self
            .http
            .post(format!("{}/api/v1/definitions", self.base))
            .body(text)
            .send()
            .await
            .expect("register");
        let ok = r.status().is_success();
        if !ok {
            eprintln!(
                "registration refused: {}",
                r.text().await.unwrap_or_default()
            );
        }
        ok
    }

    pub async fn running(&self) -> usize {
        let v = self
            .get("/api/v1/instances?status=running&limit=1000")
            .await;
        v["items"].as_array().map(Vec::len).unwrap_or(0)
    }
}
