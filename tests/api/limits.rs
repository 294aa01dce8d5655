//! Hostile or broken clients (SPEC §15): a request head that never completes, idle keep-alive
//! connections, more connections than allowed, callers that hang up before their answer, an
//! oversized head, and a shutdown that open connections cannot hold up.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use lcm::sim::{Component, Fault, FaultAction, Gate, Platform};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;

/// A keep-alive connection of its own to the app, and the task that drives it (it ends when
/// the connection closes).
async fn connect(app: &TestApp) -> (SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(("127.0.0.1", app.port()))
        .await
        .expect("connects");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

/// `GET /status` on that connection; the status code.
async fn get_status(sender: &mut SendRequest<Empty<Bytes>>) -> StatusCode {
    sender
        .ready()
        .await
        .expect("the connection takes a request");
    let request = hyper::Request::get("/status")
        .header("host", "127.0.0.1")
        .header("authorization", API_KEY)
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status();
    response.into_body().collect().await.expect("the body");
    StatusCode::from_u16(status.as_u16()).expect("a status")
}

/// Reads what the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("reads");
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends `bytes` to the service on a new connection, `chunk` bytes per write, and reads what it
/// answers until it closes the connection.
async fn exchange(app: &TestApp, bytes: &[u8], chunk: usize) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port()))
        .await
        .expect("connected");
    stream.set_nodelay(true).expect("no delay");
    for part in bytes.chunks(chunk) {
        stream.write_all(part).await.expect("sent");
    }
    read_to_close(&mut stream, Duration::from_secs(30)).await
}

/// The status codes of the answers in `raw`, in order.
fn statuses(raw: &str) -> Vec<&str> {
    raw.match_indices("HTTP/1.1 ")
        .map(|(at, _)| &raw[at + 9..at + 12])
        .collect()
}

/// The status code and JSON body of a raw `Connection: close` answer.
fn parse_answer(raw: &str) -> (u16, Value) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// The `detail` of a raw answer, checked to be `status` with a JSON body.
fn raw_detail(raw: &str, status: u16) -> String {
    let (answered, body) = parse_answer(raw);
    assert_eq!(answered, status, "{raw}");
    body["detail"].as_str().unwrap_or_default().to_owned()
}

/// A `GET /status` on a new connection, checked to wait (not served within 1.5 s) while every
/// place among `server.max_connections` is taken (`taken` says by what); see [`served`].
async fn waiting_for_a_place(
    app: &TestApp,
    taken: &str,
) -> Pin<Box<dyn Future<Output = StatusCode> + Send>> {
    let (mut sender, _driver) = connect(app).await;
    let mut waiting = Box::pin(async move { get_status(&mut sender).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut waiting)
            .await
            .is_err(),
        "a new connection was served while {taken}"
    );
    waiting
}

/// The answer of a connection from [`waiting_for_a_place`], once a place is free.
async fn served(waiting: Pin<Box<dyn Future<Output = StatusCode> + Send>>) -> StatusCode {
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a place is free")
}

/// Reads one answer on a keep-alive connection: its head, then `content-length` bytes.
async fn read_one_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("reads");
        assert!(n > 0, "closed before the answer was whole: {text}");
        received.extend_from_slice(&chunk[..n]);
    }
}

const HALF_HEAD: &[u8] = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ";

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
            ("LCM__SERVER__IDLE_TIMEOUT_SECS", "60"),
        ],
        ..BinaryOptions::default()
    })
    .await;
    let port = app.port();

    // A new connection that sends half a head (slowloris).
    let mut slow = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let opened = Instant::now();
    slow.write_all(HALF_HEAD).await.expect("writes");
    let answer = read_to_close(&mut slow, Duration::from_secs(10)).await;
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    let detail = raw_detail(&answer, 408);
    assert!(
        detail.contains("server.header_read_timeout_secs"),
        "{detail}"
    );

    // A keep-alive connection that starts its next head and stalls: the head timer, not the
    // (much longer) idle timer, applies.
    let mut stalled = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    stalled
        .write_all(
            format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {API_KEY}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("writes");
    let first = read_one_answer(&mut stalled).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    stalled.write_all(HALF_HEAD).await.expect("writes");
    let started = Instant::now();
    let answer = read_to_close(&mut stalled, Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(parse_answer(&answer).0, 408, "{answer}");

    // A whole head whose body stalls halfway: 408 too, before any handling began.
    let mut dripping = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    dripping
        .write_all(
            format!(
                "POST /trial/scheduling HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n{{\"trial"
            )
            .as_bytes(),
        )
        .await
        .expect("writes");
    let answer = read_to_close(&mut dripping, Duration::from_secs(10)).await;
    let detail = raw_detail(&answer, 408);
    assert!(
        detail.contains("body did not arrive") && detail.contains("nothing was done"),
        "{detail}"
    );
    assert_eq!(
        app.get("/status").await.body["Automatic_scheduling"],
        false,
        "the switch was not touched"
    );

    // A body declared too large is refused from its head, not waited for.
    let mut huge = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    huge.write_all(
        format!(
            "POST /trial/scheduling HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {API_KEY}\r\nContent-Length: 5000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("writes");
    let answer = read_to_close(&mut huge, Duration::from_secs(10)).await;
    assert_eq!(parse_answer(&answer).0, 413, "{answer}");

    // A connection that never sends anything is closed as quietly.
    let mut silent = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    assert_eq!(
        read_to_close(&mut silent, Duration::from_secs(10)).await,
        "",
        "nothing was asked, nothing is answered"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__SERVER__HEADER_READ_TIMEOUT_SECS", "1"),
            ("LCM__SERVER__IDLE_TIMEOUT_SECS", "3"),
        ],
        ..BinaryOptions::default()
    })
    .await;
    let (mut sender, closed) = connect(&app).await;
    assert_eq!(get_status(&mut sender).await, StatusCode::OK);
    let idle_since = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("the server closes the idle connection")
        .expect("driver");
    let waited = idle_since.elapsed();
    // Idle for longer than the head timeout (1 s) did not close it: only the idle timeout did.
    assert!(
        waited >= Duration::from_millis(2900),
        "closed after {waited:?}, before the idle timeout"
    );
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_waits_for_a_free_slot() {
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__SERVER__MAX_CONNECTIONS", "5")],
        ..BinaryOptions::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let (mut sender, driver) = connect(&app).await;
        assert_eq!(get_status(&mut sender).await, StatusCode::OK);
        open.push((sender, driver));
    }

    let sixth = waiting_for_a_place(&app, "five were open").await;
    // The open ones keep working meanwhile.
    assert_eq!(get_status(&mut open[0].0).await, StatusCode::OK);

    let (sender, driver) = open.remove(1);
    drop(sender);
    driver.await.expect("the client closes its connection");
    assert_eq!(served(sixth).await, StatusCode::OK);
}

/// A client that sends a request and hangs up before the answer leaves its handler running
/// (so a change is never left half made), and that handler keeps its connection's place among
/// `server.max_connections` until it ends: clients that send and hang up cannot pile up
/// requests in handling. The handlers' end is logged with their request, though nobody is left
/// to answer.
#[tokio::test]
async fn callers_that_hang_up_keep_their_place_until_their_request_is_handled() {
    let hung_up = ["hung-up-1", "hung-up-2"];
    let registry = Gate::new();
    let held = registry.clone();
    let app = spawn_binary_with(BinaryOptions {
        env: &[("LCM__SERVER__MAX_CONNECTIONS", "2")],
        platform: Box::new(move |platform| {
            // Without a start time: once the registry answers, each schedule ends in 502.
            for id in hung_up {
                platform.add_trial(Platform::trial(id, None));
            }
            platform.inject(Fault::new(
                Component::Repository,
                "GET",
                "/trial/",
                FaultAction::HoldUntil(held),
            ));
        }),
        ..BinaryOptions::default()
    })
    .await;
    for id in hung_up {
        let (mut sender, driver) = connect(&app).await;
        let request = hyper::Request::post(format!("/debug/trial/{id}/schedule"))
            .header("host", "127.0.0.1")
            .header("authorization", API_KEY)
            .body(Empty::new())
            .expect("request");
        let answer = sender.send_request(request);
        let waiting = format!("the schedule of {id} waits on the registry");
        tokio::select! {
            answer = answer => panic!("{id} was answered while the registry holds it: {answer:?}"),
            () = eventually_at_least(&waiting, 1, || app.platform.requests_for(id).len()) => {}
        }
        driver.abort();
    }

    // Both places are held by the hung-up requests: a new connection waits.
    let third = waiting_for_a_place(&app, "two requests were in handling").await;
    // The registry answers the two held schedules; their places are given back.
    registry.open();
    assert_eq!(served(third).await, StatusCode::OK);

    // Each hung-up schedule's end is logged with its request, as a warning, and nothing as
    // an error.
    let log = eventually("both ends in the log", || async {
        let log = log_text(&app);
        hung_up
            .iter()
            .all(|id| {
                log.contains(&format!(
                    "WARN POST /debug/trial/{id}/schedule ended with a server error status=502"
                ))
            })
            .then_some(log.clone())
            .ok_or(log)
    })
    .await;
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_json() {
    let app = spawn_binary().await;
    let answer = app
        .client
        .get(format!("{}/status", app.address))
        .header("Authorization", API_KEY)
        .header("X-Padding", "a".repeat(1024 * 1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let answer = read(answer).await;
    assert!(
        answer.detail().contains("larger than 65536 bytes"),
        "{answer:?}"
    );

    // A head just under the limit is served, and on a connection that served a large body.
    let under = app
        .client
        .get(format!("{}/status", app.address))
        .header("Authorization", API_KEY)
        .header("X-Padding", "a".repeat(60 * 1024))
        .send()
        .await
        .expect("an answer");
    assert_eq!(under.status(), StatusCode::OK);
    let body = serde_json::json!({"trial_id": "t1", "start_time": "x".repeat(900 * 1024)});
    let big_body = app
        .call(reqwest::Method::POST, "/debug/trial/schedule", Some(body))
        .await;
    assert_eq!(big_body.status, StatusCode::BAD_REQUEST, "{big_body:?}");
    assert_eq!(app.get("/status").await.status, StatusCode::OK);
}

/// hyper reads at most 100 header fields; a head with more is answered 431 with a detail, like
/// every error, and one with 100 is served.
#[tokio::test]
async fn a_head_with_too_many_header_fields_gets_431_json() {
    let app = spawn_binary().await;
    let with_fields = |fields: usize| {
        let mut request = app
            .client
            .get(format!("{}/status", app.address))
            .header("Authorization", API_KEY);
        // reqwest adds `accept` and `host`: the head has `fields` header fields in all.
        for i in 0..fields - 3 {
            request = request.header(format!("x-field-{i}"), "y");
        }
        request.send()
    };
    let answer = read(with_fields(101).await.expect("an answer")).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(
        answer.detail().contains("more than 100 header fields"),
        "{answer:?}"
    );
    let served = with_fields(100).await.expect("an answer");
    assert_eq!(served.status(), StatusCode::OK);
}

/// A request head that is not HTTP/1.1 (a bad request line, header field, target or
/// `Content-Length`) is answered 400 with a detail, like every error, and the connection closed.
#[tokio::test]
async fn a_head_that_is_not_http_gets_400_json() {
    let app = spawn_binary().await;
    for head in [
        "GARBAGE\r\n\r\n",
        "GET /status HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /trial/t1/abort HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    ] {
        let answer = exchange(&app, head.as_bytes(), head.len()).await;
        let detail = raw_detail(&answer, 400);
        assert!(detail.contains("not valid HTTP/1.1"), "{head:?}: {answer}");
    }
    assert_eq!(app.get("/status").await.status, StatusCode::OK);
}

/// Pipelined requests (many in one write, past any read buffer, some with bodies) are each
/// answered: the head check never takes the middle of a request for a head.
#[tokio::test]
async fn pipelined_requests_are_each_answered() {
    let app = spawn_binary().await;
    let count = 300;
    let mut requests = String::new();
    for i in 0..count {
        let close = if i + 1 == count {
            "Connection: close\r\n"
        } else {
            ""
        };
        if i % 3 == 0 {
            let body = r#"{"reason": "pipelined"}"#;
            requests.push_str(&format!(
                "POST /trial/piped-{i}/pause HTTP/1.1\r\nHost: x\r\nAuthorization: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            ));
        } else {
            requests.push_str(&format!(
                "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: {API_KEY}\r\n{close}\r\n"
            ));
        }
    }
    let answers = exchange(&app, requests.as_bytes(), requests.len()).await;
    let statuses = statuses(&answers);
    assert_eq!(statuses.len(), count, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == "200" || *s == "404"),
        "{statuses:?}"
    );
}

/// Requests sent one byte at a time, each behind the other without waiting for answers, are
/// each answered: bytes hyper reads while a request is handled are the next request's, and the
/// head check does not take what follows for a head of its own.
#[tokio::test]
async fn requests_written_a_byte_at_a_time_without_waiting_are_each_answered() {
    let app = spawn_binary().await;
    let request = format!("GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: {API_KEY}\r\n\r\n");
    let last = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: {API_KEY}\r\nConnection: close\r\n\r\n"
    );
    let requests = format!("{request}{request}{last}");
    for round in 0..60 {
        let answers = exchange(&app, requests.as_bytes(), 1).await;
        assert_eq!(
            statuses(&answers),
            ["200", "200", "200"],
            "round {round}: {answers}"
        );
    }
}

#[tokio::test]
async fn sigterm_ends_the_process_within_the_grace_whatever_the_clients_do() {
    let mut app = spawn_binary_with(BinaryOptions {
        env: &[
            ("LCM__SERVER__HEADER_READ_TIMEOUT_SECS", "120"),
            ("LCM__SERVER__SHUTDOWN_GRACE_SECS", "10"),
        ],
        ..BinaryOptions::default()
    })
    .await;
    let port = app.port();
    let id = "after-shutdown";
    app.platform.add_trial(Platform::trial(id, None));

    // Half a head, and a request whose body never comes: neither ends by itself.
    let mut half_head = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    half_head.write_all(HALF_HEAD).await.expect("writes");
    let mut half_body = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    half_body
        .write_all(
            format!(
                "POST /debug/trial/schedule HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("writes");
    // The 100 Continue comes once the handler reads the body: the request is in flight.
    let mut continue_line = [0u8; 25];
    tokio::time::timeout(
        Duration::from_secs(10),
        half_body.read_exact(&mut continue_line),
    )
    .await
    .expect("100 Continue in time")
    .expect("reads");
    assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");
    half_body.write_all(b"{\"trial_id\"").await.expect("writes");

    // Due within the grace; the signal follows the schedule's answer at once.
    let due = Instant::now() + Duration::from_secs(6);
    assert_eq!(app.schedule(id, &in_ms(6000)).await.status, StatusCode::OK);
    assert!(
        Instant::now() < due,
        "too slow to signal before the job is due: this run proves nothing"
    );
    let (status, took) = terminate(&mut app, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: more than the 10 s grace allows"
    );
    assert!(
        took >= Duration::from_millis(9500),
        "took {took:?}: the request in flight did not get its grace"
    );
    // The job was due during the grace: it never fired.
    let sent = lines(&app, id);
    assert!(sent.is_empty(), "{sent:?}");
}
