//! Token hygiene over real loopback sockets (issue #21, item 5): a token
//! whose `sub` is a lookalike of another user is refused at the upgrade, and
//! an ordinary HTTP route of the same app gets the upgrade's identity and
//! thread policy through the `Authenticated` extractor, with refusals that
//! say no more than their status.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;
use websocket_manager::transport::{
    AuthError, Authenticated, OriginPolicy, UserScopedThreads, WebSocketService,
};
use websocket_manager::{DynManager, managers::UnifiedWebSocketManager};
use websocket_manager_test_support::e2e::*;

#[tokio::test]
async fn a_lookalike_subject_gets_401_at_the_upgrade() {
    bounded(async {
        let server = TestServer::start(ServerOptions::default()).await;
        for lookalike in ["alice\u{200B}", "\u{202E}ecila", "alice "] {
            let refused = try_connect(
                server.addr,
                Connect::new("/ws", Some(token(lookalike, 600))),
            )
            .await;
            let Err(tungstenite::Error::Http(response)) = refused else {
                panic!("{lookalike:?} was not refused with an HTTP status: {refused:?}");
            };
            assert_eq!(response.status(), 401, "{lookalike:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            // the detail (which code point) is logged, not sent
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert_eq!(body, "Unauthorized", "{lookalike:?}");
        }
        // the user they imitate is let in
        let (alice, _) = try_connect(server.addr, Connect::new("/ws", Some(token("alice", 600))))
            .await
            .unwrap();
        server.wait_connections("alice", 1).await;
        close(alice).await;
        server.assert_indexes_empty().await;
    })
    .await;
}

/// `POST /messages?thread=...` behind the `Authenticated` extractor: it
/// answers who posted to which thread.
async fn post_message(who: Authenticated, body: String) -> Result<String, AuthError> {
    let thread = who
        .thread_id
        .ok_or(AuthError::BadRequest("`thread` is required".into()))?;
    Ok(format!("{} -> {thread}: {body}", who.identity.user_id))
}

async fn http_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let manager = Arc::new(UnifiedWebSocketManager::default());
    let service = WebSocketService::builder(
        DynManager::from(manager),
        UserScopedThreads(authenticator()),
    )
    .origins(OriginPolicy::allow([ALLOWED_ORIGIN]))
    .build();
    let app = axum::Router::new()
        .route("/ws", get(websocket_manager::transport::axum::upgrade))
        .route("/messages", post(post_message))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        websocket_manager::transport::axum::serve(listener, app)
            .await
            .unwrap();
    });
    (addr, server)
}

/// A status, the response head (lower-cased) and the body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// `POST <path>` over a fresh loopback connection, with these extra header lines.
async fn post_to(addr: SocketAddr, path: &str, headers: &[String]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = "hello";
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut response))
        .await
        .expect("no answer within the step timeout")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn an_ordinary_route_gets_the_upgrade_identity_and_thread_policy() {
    bounded(async {
        let (addr, server) = http_server().await;
        let bearer = |user: &str| format!("Authorization: Bearer {}", token(user, 600));

        let posted = post_to(addr, "/messages?thread=alice:run-1", &[bearer("alice")]).await;
        assert_eq!(posted.status, 200, "{}", posted.body);
        assert_eq!(posted.body, "alice -> alice:run-1: hello");
        // any case of the scheme
        let lower = format!("Authorization: bearer {}", token("alice", 600));
        let posted = post_to(addr, "/messages?thread=alice:run-1", &[lower]).await;
        assert_eq!(posted.status, 200, "{}", posted.body);

        // no token, a forged one, an expired one, a lookalike user: 401,
        // with the challenge and no detail
        let forged = format!(
            "Authorization: Bearer {}",
            token_signed("alice", 600, b"another secret, 32 bytes or more")
        );
        let expired = format!("Authorization: Bearer {}", token("alice", -60));
        for headers in [
            vec![],
            vec![forged],
            vec![expired],
            vec![bearer("alice\u{200B}")],
        ] {
            let refused = post_to(addr, "/messages?thread=alice:run-1", &headers).await;
            assert_eq!(refused.status, 401, "{headers:?}: {}", refused.body);
            assert!(
                refused.head.contains("\r\nwww-authenticate: bearer"),
                "{}",
                refused.head
            );
            assert_eq!(refused.body, "Unauthorized");
        }

        // another user's thread, or a foreign origin: 403, as on /ws
        let refused = post_to(addr, "/messages?thread=bob:run-1", &[bearer("alice")]).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(
            !refused.head.contains("www-authenticate"),
            "{}",
            refused.head
        );
        assert_eq!(refused.body, "Forbidden");
        let foreign = [bearer("alice"), "Origin: https://evil.example".to_owned()];
        let refused = post_to(addr, "/messages?thread=alice:run-1", &foreign).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        let allowed = [bearer("alice"), format!("Origin: {ALLOWED_ORIGIN}")];
        assert_eq!(
            post_to(addr, "/messages?thread=alice:run-1", &allowed)
                .await
                .status,
            200
        );

        // a thread id with an invisible character: 400 saying which
        let refused = post_to(
            addr,
            "/messages?thread=alice:run%E2%80%8B1",
            &[bearer("alice")],
        )
        .await;
        assert_eq!(refused.status, 400, "{}", refused.body);
        assert!(refused.body.contains("U+200B"), "{}", refused.body);
        server.abort();
    })
    .await;
}
