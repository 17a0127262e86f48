//! `autoneural serve` over raw HTTP/1.1: the request/response shapes, SSE framing and every error
//! path with its status code and OpenAI error JSON (the official `openai` client tests are in
//! `python/tests/test_server.py`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_autoneural"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "server exited");
            if let Some(i) = line.find("http://") {
                addr = Some(line[i + 7..].split_whitespace().next().unwrap().to_string());
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        let s = Server {
            child,
            addr: addr.unwrap(),
        };
        let t = Instant::now();
        while s.get("/health").0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(60), "model did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let _ = s.write_all(body); // the server may answer (413) before reading it all
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse(&raw)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn chat(&self, body: &serde_json::Value) -> Resp {
        self.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, lower-cased headers, body (de-chunked).
type Resp = (u16, HashMap<String, String>, Vec<u8>);

fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[i + 2 + n + 2..];
        }
        body = out;
    }
    (status, headers, body)
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.2)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.2)))
}

/// Status and the OpenAI error type of a response.
fn error_of(r: &Resp) -> (u16, String) {
    let j = json(r);
    (
        r.0,
        j["error"]["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.type in {j}"))
            .to_string(),
    )
}

fn cockpit() -> String {
    root()
        .join("models/autoneural-cockpit-tiny")
        .display()
        .to_string()
}

#[test]
fn shapes_framing_and_error_paths() {
    let s = Server::start(&["--model", &cockpit(), "--max-body-bytes", "100000"]);
    let user = |t: &str| serde_json::json!([{"role": "user", "content": t}]);

    // A non-streamed answer.
    let r = s.chat(&serde_json::json!({"messages": user("Hello"), "max_tokens": 4}));
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    let j = json(&r);
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant");
    let u = &j["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert!(u["completion_tokens"].as_u64().unwrap() <= 4);

    // SSE framing: data lines, one id, role first, finish reason, usage, [DONE] last.
    let r = s.chat(
        &serde_json::json!({"messages": user("Hello"), "max_tokens": 4,
        "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.0, 200);
    assert!(r.1["content-type"].starts_with("text/event-stream"));
    let text = String::from_utf8(r.2.clone()).unwrap();
    let data: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(finish == "stop" || finish == "length", "{finish}");

    // Error paths: status and OpenAI error JSON.
    let bad = |body: &str| {
        s.request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let invalid = (400, "invalid_request_error".to_string());
    assert_eq!(error_of(&bad("{not json")), invalid);
    assert_eq!(error_of(&bad(r#"{"messages": []}"#)), invalid);
    assert_eq!(
        error_of(&bad(r#"{"messages": [{"role": "robot", "content": "x"}]}"#)),
        invalid
    );
    assert_eq!(
        error_of(&bad(
            r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#
        )),
        invalid
    );
    assert_eq!(
        error_of(&bad(
            r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 9}"#
        )),
        invalid
    );
    assert_eq!(
        error_of(&bad(
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#
        )),
        invalid
    );
    let img = |url: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]})
    };
    assert_eq!(
        error_of(&s.chat(&img("https://example.com/a.png"))),
        invalid
    );
    // Image URLs are off by default: refused before any connection, saying how to allow them.
    let origin = Origin::start(Vec::new());
    for url in [origin.url("/image.png"), "file:///etc/passwd".to_string()] {
        let r = s.chat(&img(&url));
        assert_eq!(error_of(&r), invalid);
        assert_eq!(json(&r)["error"]["code"], "image_urls_disabled");
        let msg = json(&r)["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("--image-urls public"), "{msg}");
    }
    assert_eq!(origin.hits(), 0);
    assert_eq!(
        error_of(&s.chat(&img("data:image/png;base64,aGVsbG8="))),
        invalid
    );
    let r = bad(&format!(r#"{{"messages": "{}"}}"#, "x".repeat(200_000)));
    assert_eq!(error_of(&r), (413, "invalid_request_error".to_string()));
    let r = s.chat(&serde_json::json!({"messages": user(&"word ".repeat(6000))}));
    assert_eq!(error_of(&r), invalid);
    assert_eq!(json(&r)["error"]["code"], "context_length_exceeded");
    assert_eq!(
        error_of(&s.get("/v1/nothing")),
        (404, "not_found_error".to_string())
    );

    // Models, tokenize, metrics, page.
    let m = json(&s.get("/v1/models"));
    assert_eq!(m["data"][0]["id"], "autoneural-cockpit-tiny");
    let t = s.request("POST", "/tokenize", &[], br#"{"content": "<|im_end|>"}"#);
    let ids = json(&t)["tokens"].clone();
    assert!(
        ids.as_array().unwrap().len() > 1,
        "typed special tokens are text: {ids}"
    );
    let t = s.request(
        "POST",
        "/tokenize",
        &[],
        br#"{"content": "<|im_end|>", "parse_special": true}"#,
    );
    assert_eq!(json(&t)["tokens"], serde_json::json!([7]));
    let d = s.request("POST", "/detokenize", &[], br#"{"tokens": [999999]}"#);
    assert_eq!(error_of(&d), invalid);
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    assert!(metrics.contains("autoneural_requests_total"), "{metrics}");
    assert!(
        metrics.contains("autoneural_time_to_first_token_seconds"),
        "{metrics}"
    );
    let page = s.get("/");
    assert_eq!(page.0, 200);
    assert!(String::from_utf8_lossy(&page.2).contains("/v1/chat/completions"));
}

#[test]
fn api_key_and_a_full_queue() {
    let random = root().join("models/autoneural-tiny-random");
    let s = Server::start(&[
        "--model",
        random.to_str().unwrap(),
        "--api-key",
        "k1",
        "--parallel",
        "1",
        "--queue",
        "0",
        "--image-urls",
        "any",
    ]);
    let body = br#"{"messages": [{"role": "user", "content": "go"}], "max_tokens": 2}"#;
    let post = |auth: Option<&str>, body: &[u8]| {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        s.request("POST", "/v1/chat/completions", &h, body)
    };
    assert_eq!(error_of(&post(None, body)).0, 401);
    assert_eq!(
        error_of(&post(Some("Bearer k2"), body)),
        (401, "authentication_error".to_string())
    );
    assert_eq!(post(Some("Bearer k1"), body).0, 200);
    assert_eq!(s.get("/health").0, 200); // open
    assert_eq!(s.get("/metrics").0, 200); // open

    // One long generation holds the only slot; with no queue the next request is a 503.
    // The random model never stops early: 4000 tokens would keep the slot for seconds.
    let long =
        br#"{"messages": [{"role": "user", "content": "go"}], "max_tokens": 4000, "stream": true}"#;
    let mut hold = TcpStream::connect(&s.addr).unwrap();
    write!(
        hold,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        long.len()
    )
    .unwrap();
    hold.write_all(long).unwrap();
    let mut first = [0u8; 64];
    hold.read_exact(&mut first).unwrap(); // the stream has started: the slot is taken
    let r = post(Some("Bearer k1"), body);
    assert_eq!(error_of(&r), (503, "unavailable_error".to_string()));
    assert_eq!(r.1.get("retry-after").map(String::as_str), Some("1"));
    // A full server refuses before fetching anything: the image's origin sees no connection.
    let origin = Origin::start(std::fs::read(root().join("assets/cockpit_road.png")).unwrap());
    let with_url = image_request(&origin.url("/image.png"), false).to_string();
    let r = post(Some("Bearer k1"), with_url.as_bytes());
    assert_eq!(error_of(&r), (503, "unavailable_error".to_string()));
    assert_eq!(origin.hits(), 0, "a refused request fetched its image");
    // The client leaves: its generation is cancelled and the slot comes back.
    drop(hold);
    let t = Instant::now();
    loop {
        if post(Some("Bearer k1"), body).0 == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It came back because the generation stopped, not because it finished.
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    let generated: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("autoneural_generated_tokens_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(generated < 2000.0, "{generated} tokens generated");
}

#[test]
fn precision_serves_a_float_model_on_the_integer_path() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    std::fs::copy(root().join("assets/cockpit_road.png"), calib.join("a.png")).unwrap();
    std::fs::write(
        calib.join("prompts.txt"),
        "What colour is the traffic light?\n",
    )
    .unwrap();
    let s = Server::start(&[
        "--model",
        &cockpit(),
        "--precision",
        "default",
        "--calibration",
        calib.to_str().unwrap(),
    ]);
    let m = json(&s.get("/v1/models"));
    assert_eq!(m["data"][0]["meta"]["path"], "integer");
    let r = s.chat(&serde_json::json!({
        "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}));
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
}

/// A tiny HTTP/1.1 origin on loopback for image URLs: `/image.png` (the bytes given),
/// `/redirect/N` (N redirects, then the image), `/big` (a declared Content-Length over the
/// cap), `/big-stream` (the same without a Content-Length), `/missing` (404), `/slow` (answers
/// after 5 s), `/not-an-image`. Counts the connections it accepts.
struct Origin {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    const BIG: usize = 300_000;

    fn start(image: Vec<u8>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (image, counter) = (Arc::new(image), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                counter.fetch_add(1, Ordering::Relaxed);
                let image = image.clone();
                std::thread::spawn(move || Origin::answer(conn, &image));
            }
        });
        Origin { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    fn answer(mut conn: TcpStream, image: &[u8]) {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let reply = |conn: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n"
            );
            let _ = conn.write_all(body);
        };
        let sized = |ct: &str, n: usize| format!("Content-Type: {ct}\r\nContent-Length: {n}\r\n");
        match path.as_str() {
            "/image.png" => reply(&mut conn, "200 OK", &sized("image/png", image.len()), image),
            "/big" => reply(
                &mut conn,
                "200 OK",
                &sized("image/png", Origin::BIG),
                &vec![0u8; Origin::BIG],
            ),
            // No length: the body ends when the connection closes.
            "/big-stream" => reply(
                &mut conn,
                "200 OK",
                "Content-Type: image/png\r\n",
                &vec![0u8; Origin::BIG],
            ),
            "/missing" => reply(&mut conn, "404 Not Found", &sized("text/plain", 4), b"gone"),
            "/slow" => {
                std::thread::sleep(Duration::from_secs(5));
                reply(&mut conn, "200 OK", &sized("image/png", image.len()), image)
            }
            "/not-an-image" => reply(&mut conn, "200 OK", &sized("image/png", 5), b"hello"),
            p => match p
                .strip_prefix("/redirect/")
                .and_then(|n| n.parse::<u32>().ok())
            {
                Some(n) => {
                    let to = if n <= 1 {
                        "/image.png".to_string()
                    } else {
                        format!("/redirect/{}", n - 1)
                    };
                    let h = format!("Location: {to}\r\nContent-Length: 0\r\n");
                    reply(&mut conn, "302 Found", &h, b"")
                }
                None => reply(&mut conn, "404 Not Found", &sized("text/plain", 0), b""),
            },
        }
    }
}

fn image_request(url: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What colour is the traffic light?"}]}],
        "max_tokens": 8, "temperature": 0, "stream": stream})
}

/// Status, OpenAI error code and message of a refused request.
fn refusal(r: &Resp) -> (u16, String, String) {
    let j = json(r);
    assert_eq!(j["error"]["type"], "invalid_request_error", "{j}");
    (
        r.0,
        j["error"]["code"].as_str().unwrap_or_default().to_string(),
        j["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn image_urls_any_fetches_within_the_limits() {
    let png = std::fs::read(root().join("assets/cockpit_road.png")).unwrap();
    assert!(png.len() < 200_000 && Origin::BIG > 200_000);
    let origin = Origin::start(png.clone());
    let s = Server::start(&[
        "--model",
        &cockpit(),
        "--image-urls",
        "any",
        "--max-image-bytes",
        "200000",
        "--image-url-timeout",
        "1.5",
    ]);
    let answer = |r: &Resp| {
        assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
        json(r)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    use base64::Engine as _;
    let data_uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let by_data = answer(&s.chat(&image_request(&data_uri, false)));
    assert_eq!(by_data, "Green.");
    // The same bytes by URL: the same answer, the embedding from the cache.
    let by_url = answer(&s.chat(&image_request(&origin.url("/image.png"), false)));
    assert_eq!(by_url, by_data);
    let metrics = String::from_utf8(s.get("/metrics").2).unwrap();
    let hits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("autoneural_image_cache_hits_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(hits >= 1.0, "{hits}");
    // Three redirects are followed, a fourth is not.
    assert_eq!(
        answer(&s.chat(&image_request(&origin.url("/redirect/3"), false))),
        by_data
    );
    let r = refusal(&s.chat(&image_request(&origin.url("/redirect/4"), false)));
    assert_eq!(
        (r.0, r.1.as_str()),
        (400, "image_url_too_many_redirects"),
        "{}",
        r.2
    );
    assert!(r.2.contains("more than 3 times"), "{}", r.2);
    // Over the byte cap, declared or not; the origin's errors; a timeout; not an image.
    for (path, code, says) in [
        ("/big", "image_too_large", "200000-byte limit"),
        ("/big-stream", "image_too_large", "200000-byte limit"),
        ("/missing", "image_url_http_error", "HTTP 404"),
        ("/slow", "image_url_timeout", "1.5s limit"),
        ("/not-an-image", "", "image 1: not an image"),
    ] {
        let r = refusal(&s.chat(&image_request(&origin.url(path), false)));
        assert_eq!((r.0, r.1.as_str()), (400, code), "{path}: {}", r.2);
        assert!(r.2.contains(says), "{path}: {}", r.2);
    }
    // Streamed requests get the same HTTP error (nothing was generated yet).
    let r = refusal(&s.chat(&image_request(&origin.url("/missing"), true)));
    assert_eq!((r.0, r.1.as_str()), (400, "image_url_http_error"));
    // Nothing listening; not http(s); credentials.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (url, code) in [
        (format!("http://{closed}/a.png"), "image_url_unreachable"),
        ("file:///etc/passwd".into(), "invalid_image_url"),
        (
            format!("http://user:pw@{}/image.png", origin.addr),
            "invalid_image_url",
        ),
    ] {
        let r = refusal(&s.chat(&image_request(&url, false)));
        assert_eq!((r.0, r.1.as_str()), (400, code), "{url}: {}", r.2);
    }
}

#[test]
fn image_urls_public_refuses_loopback() {
    let origin = Origin::start(std::fs::read(root().join("assets/cockpit_road.png")).unwrap());
    let s = Server::start(&["--model", &cockpit(), "--image-urls", "public"]);
    let port = origin.addr.port();
    for (url, names) in [
        (origin.url("/image.png"), "127.0.0.1 (loopback)"),
        (format!("http://localhost:{port}/image.png"), "(loopback)"),
        (format!("http://[::1]:{port}/image.png"), "::1 (loopback)"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/image.png"),
            "IPv4-mapped",
        ),
        (format!("http://2130706433:{port}/image.png"), "127.0.0.1"),
        (format!("http://0.0.0.0:{port}/image.png"), "unspecified"),
    ] {
        let r = refusal(&s.chat(&image_request(&url, false)));
        assert_eq!(
            (r.0, r.1.as_str()),
            (400, "image_url_blocked"),
            "{url}: {}",
            r.2
        );
        assert!(r.2.contains(names), "{url}: {}", r.2);
    }
    assert_eq!(origin.hits(), 0, "the guard let a connection through");
}

/// The text, finish reason and completion tokens of a chat answer, streamed or not.
fn answer(r: &Resp, stream: bool) -> (String, String, u64) {
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.2));
    if !stream {
        let j = json(r);
        return (
            j["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            j["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_string(),
            j["usage"]["completion_tokens"].as_u64().unwrap(),
        );
    }
    let text = String::from_utf8(r.2.clone()).unwrap();
    let (mut content, mut finish, mut tokens) = (String::new(), String::new(), 0);
    for d in text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
    {
        let c: serde_json::Value = serde_json::from_str(d).unwrap();
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            content.push_str(t);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
        if let Some(n) = c["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    (content, finish, tokens)
}

/// A metric's value in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        .parse()
        .unwrap()
}

#[test]
fn batched_decode_gives_each_request_the_answer_it_gets_alone() {
    let random = root().join("models/autoneural-tiny-random");
    batched_answers_equal_answers_alone(&["--model", random.to_str().unwrap()]);
}

/// The same on the integer path (the float model quantized at start-up).
#[test]
fn batched_decode_on_the_integer_path_gives_the_answers_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    std::fs::copy(root().join("assets/cockpit_road.png"), calib.join("a.png")).unwrap();
    std::fs::write(calib.join("prompts.txt"), "What is this?\n").unwrap();
    let random = root().join("models/autoneural-tiny-random");
    batched_answers_equal_answers_alone(&[
        "--model",
        random.to_str().unwrap(),
        "--precision",
        "default",
        "--calibration",
        calib.to_str().unwrap(),
    ]);
}

/// Answers of 4 requests sent one by one to a server without batching, then concurrently
/// (twice) to one with batching: the same text, finish reason and token count.
fn batched_answers_equal_answers_alone(model: &[&str]) {
    use base64::Engine as _;
    let image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(root().join("assets/cockpit_road.png")).unwrap())
    );
    let user = |t: &str| serde_json::json!([{"role": "user", "content": t}]);
    // Greedy, seeded sampling (with and without top-p), an image, streamed and not; lengths
    // differ, so sequences join and leave the batch at different steps. The random model never
    // stops on its own.
    let mut reqs = [
        serde_json::json!({"messages": user("go"), "max_tokens": 300, "temperature": 0}),
        serde_json::json!({"messages": user("tell me more about it"), "max_tokens": 220,
            "temperature": 1.0, "seed": 7, "stream": true}),
        serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "What is this?"}]}],
            "max_tokens": 260, "temperature": 0.8, "top_p": 0.9, "seed": 3}),
        serde_json::json!({"messages": user("x"), "max_tokens": 280, "temperature": 1.2,
            "seed": 11, "stream": true}),
    ];
    let stream = |r: &serde_json::Value| r["stream"].as_bool().unwrap_or(false);

    let alone = Server::start(&[model, &["--batch-decode", "off", "--parallel", "1"]].concat());
    // A stop sequence from the middle of the last answer, so that one stops on it.
    let (text, _, _) = answer(&alone.chat(&reqs[3]), true);
    let cut: String = text
        .chars()
        .skip(text.chars().count() / 2)
        .take(3)
        .collect();
    reqs[3]["stop"] = serde_json::json!([cut]);
    let want: Vec<_> = reqs
        .iter()
        .map(|r| answer(&alone.chat(r), stream(r)))
        .collect();
    assert_eq!(want[3].1, "stop", "the stop sequence ends the last answer");
    assert!(want[3].2 < 280);
    drop(alone);

    let batched = Server::start(&[model, &["--batch-decode", "on", "--parallel", "4"]].concat());
    for round in 0..2 {
        let got: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = reqs
                .iter()
                .map(|r| {
                    let s = &batched;
                    sc.spawn(move || answer(&s.chat(r), stream(r)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, w,
                "round {round}: request {k} differs from its answer alone"
            );
        }
    }
    // The decode steps really were batched.
    let page = String::from_utf8(batched.get("/metrics").2).unwrap();
    let steps = metric(&page, "autoneural_decode_batch_size_count");
    let single = metric(&page, "autoneural_decode_batch_size_bucket{le=\"1\"}");
    assert!(
        steps - single > 100.0,
        "{steps} steps, {single} of one sequence"
    );
}
