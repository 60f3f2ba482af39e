//! Refusing before the upgrade (issue 20): a service that cannot take a
//! connection (its manager not ready, draining, at its connection limit)
//! answers the upgrade with `503` and `Retry-After`, never `101` and a
//! close; and a connection admitted just before shutdown is closed with
//! 1001 and counted in the shutdown report. Every test runs over real
//! loopback sockets, on both adapters (axum and tokio-tungstenite).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite;
use websocket_manager::transport::{
    HandlerError, OriginPolicy, RateLimit, TransportConfig, UpgradeRequest, WebSocketService,
    handler_fn,
};
use websocket_manager::{
    DynManager, NotReady, NotReadyReason,
    managers::{ManagerConfig, UnifiedWebSocketManager},
};
use websocket_manager_test_support::e2e::*;

/// Serves `service` on both adapters; their addresses (axum first).
async fn serve_both(service: &WebSocketService) -> [SocketAddr; 2] {
    // The axum server's task runs on when its handle is dropped.
    let (axum, _server) = axum_server(service.clone()).await;
    [axum, tungstenite_server(service.clone()).await]
}

fn service_over(manager: &Arc<UnifiedWebSocketManager>) -> WebSocketService {
    WebSocketService::builder(DynManager::from(Arc::clone(manager)), authenticator())
        .origins(OriginPolicy::allow([ALLOWED_ORIGIN]))
        .build()
}

/// An upgrade that must be refused with 503: its `Retry-After` (seconds)
/// and body. Panics on a `101`.
async fn expect_503(addr: SocketAddr, user: &str) -> (u64, String) {
    match try_connect(addr, Connect::new("/ws", Some(token(user, 600)))).await {
        Ok(_) => panic!("{addr}: upgraded (101) although the service is not ready"),
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503, "{addr}: {response:?}");
            let retry_after = response
                .headers()
                .get("retry-after")
                .unwrap_or_else(|| panic!("{addr}: 503 without Retry-After: {response:?}"))
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            (retry_after, body)
        }
        Err(other) => panic!("{addr}: unexpected handshake error {other}"),
    }
}

#[tokio::test]
async fn a_manager_that_is_not_ready_is_refused_before_the_upgrade_on_both_adapters() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = service_over(&manager);
        let addrs = serve_both(&service).await;
        for addr in addrs {
            let client = connect(addr, "ready-user", None).await;
            close(client).await;
        }
        // The manager takes no connection any more: accepting the socket
        // and then closing it (the 101-then-1011 loop) is what the
        // 503 replaces.
        manager.shutdown();
        assert_eq!(service.readiness().reason(), Some(NotReadyReason::ShutDown));
        for addr in addrs {
            let (retry_after, body) = expect_503(addr, "late-user").await;
            // 5 s for a shut-down manager, plus up to a quarter of jitter.
            assert!((5..=6).contains(&retry_after), "{addr}: {retry_after}");
            assert_eq!(body, "Service Unavailable: shut_down", "{addr}");
        }
        assert_eq!(service.live_connections(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_held_service_refuses_with_its_reason_and_admits_again_once_released() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = service_over(&manager);
        let addrs = serve_both(&service).await;
        service.hold(NotReady::new(
            NotReadyReason::Starting,
            "startup checks still running",
            Duration::from_secs(2),
        ));
        for addr in addrs {
            let (retry_after, body) = expect_503(addr, "early-user").await;
            assert!((2..=3).contains(&retry_after), "{addr}: {retry_after}");
            // The reason, never the operator's detail.
            assert_eq!(body, "Service Unavailable: starting", "{addr}");
        }
        service.release();
        for addr in addrs {
            let client = connect(addr, "early-user", None).await;
            close(client).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_draining_service_refuses_upgrades_while_its_connections_run() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = service_over(&manager);
        let addrs = serve_both(&service).await;
        let mut open = Vec::new();
        for addr in addrs {
            open.push(connect(addr, "draining-user", None).await);
        }
        let wait = async {
            while service.live_connections() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(STEP, wait).await.unwrap();

        service.stop_admitting();
        for addr in addrs {
            let (retry_after, body) = expect_503(addr, "newcomer").await;
            assert!((5..=6).contains(&retry_after), "{addr}: {retry_after}");
            assert_eq!(body, "Service Unavailable: draining", "{addr}");
        }
        // Draining refuses newcomers only: both connections still run.
        assert_eq!(service.live_connections(), 2);

        let report = service.shutdown(STEP).await;
        for mut client in open {
            assert_eq!(
                expect_close(&mut client).await.map(|(code, _)| code),
                Some(1001)
            );
        }
        assert_eq!(report.connections_at_start, 2, "{report}");
        assert_eq!(report.closed_within_drain, 2, "{report}");
    })
    .await;
}

#[tokio::test]
async fn past_the_connection_limit_upgrades_get_503_at_capacity() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service =
            WebSocketService::builder(DynManager::from(Arc::clone(&manager)), authenticator())
                .max_connections(1)
                .build();
        let addrs = serve_both(&service).await;
        for addr in addrs {
            let first = connect(addr, "capacity-user", None).await;
            let (retry_after, body) = expect_503(addr, "capacity-user").await;
            assert!((2..=3).contains(&retry_after), "{addr}: {retry_after}");
            assert_eq!(body, "Service Unavailable: at_capacity", "{addr}");
            close(first).await;
            let wait = async {
                while !service.readiness().is_ready() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(STEP, wait).await.unwrap();
        }
    })
    .await;
}

/// The last case: a socket answered `101` just before the signal,
/// not yet registered when shutdown looks at its connections. Driven
/// through the service's own steps so that the order is exact: admitted,
/// then shutdown begins, then the socket reaches `serve`.
#[tokio::test]
async fn a_socket_admitted_just_before_shutdown_is_closed_with_1001_and_reported() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = service_over(&manager);

        let uri: axum::http::Uri = "/ws".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {}", token("last-minute", 600))
                .parse()
                .unwrap(),
        );
        let admission = service
            .admit(&UpgradeRequest::new(&uri, &headers))
            .await
            .unwrap();

        // A real socket pair over loopback, handshake done by tungstenite.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await
        });
        let (stream, _) = listener.accept().await.unwrap();
        let server_side = tokio_tungstenite::accept_async(stream).await.unwrap();
        let (mut client, _) = client.await.unwrap().unwrap();

        let shutdown = tokio::spawn({
            let service = service.clone();
            async move { service.shutdown(STEP).await }
        });
        let began = async {
            while service.is_accepting() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(STEP, began).await.unwrap();

        let outcome = service
            .serve(
                websocket_manager::transport::tungstenite::TungsteniteSocket::new(server_side),
                admission,
            )
            .await;
        assert_eq!(
            expect_close(&mut client).await.map(|(code, _)| code),
            Some(1001),
            "{outcome}"
        );
        let report = shutdown.await.unwrap();
        assert_eq!(report.connections_at_start, 1, "{report}");
        assert_eq!(report.closed_within_drain, 1, "{report}");
        assert_eq!(report.upgrades_not_served, 0, "{report}");
        assert!(report.is_clean(), "{report}");
    })
    .await;
}

#[tokio::test]
async fn an_admitted_upgrade_that_never_arrives_is_reported_not_waited_for_forever() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service = service_over(&manager);
        let uri: axum::http::Uri = "/ws".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {}", token("vanished", 600))
                .parse()
                .unwrap(),
        );
        let admission = service
            .admit(&UpgradeRequest::new(&uri, &headers))
            .await
            .unwrap();
        // Still upgrading when the drain time runs out.
        let report = service.shutdown(Duration::from_millis(100)).await;
        assert_eq!(report.connections_at_start, 1, "{report}");
        assert_eq!(report.closed_within_drain, 0, "{report}");
        assert_eq!(report.upgrades_not_served, 1, "{report}");
        assert!(
            report
                .to_string()
                .contains("1 admitted upgrade(s) never became a connection"),
            "{report}"
        );
        drop(admission);
    })
    .await;
}

/// Admission control (issue 19): new connections faster than the
/// connection rate get `503` `rate_limited` with a `Retry-After`, counted;
/// once a token is back the next upgrade passes.
#[tokio::test]
async fn upgrades_over_the_connection_rate_get_503_rate_limited_and_are_counted() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let service =
            WebSocketService::builder(DynManager::from(Arc::clone(&manager)), authenticator())
                .connection_rate(RateLimit::new(1, 2).unwrap())
                .build();
        let addrs = serve_both(&service).await;
        let mut refused = 0;
        for addr in addrs {
            // Let the bucket fill to its burst of 2 again.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            let first = connect(addr, "rate-user", None).await;
            let second = connect(addr, "rate-user", None).await;
            let (retry_after, body) = expect_503(addr, "rate-user").await;
            refused += 1;
            assert!((1..=2).contains(&retry_after), "{addr}: {retry_after}");
            assert_eq!(body, "Service Unavailable: rate_limited", "{addr}");
            // The readiness route does not turn away every client for it.
            assert!(service.readiness().is_ready(), "{addr}");
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let third = connect(addr, "rate-user", None).await;
            for client in [first, second, third] {
                close(client).await;
            }
        }
        let stats = service.stats();
        assert_eq!(stats.upgrades_refused_rate_limited, refused, "{stats}");
        assert_eq!(stats.upgrades_admitted, 6, "{stats}");
        assert_eq!(stats.upgrades_refused_at_capacity, 0, "{stats}");
    })
    .await;
}

/// A connection that sends faster than its inbound rate: each message over
/// the rate gets an error frame `rate_limited` (not handled); past the
/// error-frame budget the connection is closed with 1008 `message rate
/// exceeded`, and both are counted.
#[tokio::test]
async fn messages_over_the_inbound_rate_get_rate_limited_frames_then_1008() {
    bounded(async {
        let manager = Arc::new(UnifiedWebSocketManager::new(ManagerConfig::default()));
        let config = TransportConfig::builder()
            .inbound_rate(RateLimit::new(1, 5).unwrap())
            .error_frames(3, Duration::from_secs(60))
            .build()
            .unwrap();
        let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&handled);
        let service =
            WebSocketService::builder(DynManager::from(Arc::clone(&manager)), authenticator())
                .config(config)
                .handler(handler_fn(move |_context, _message| {
                    let counter = Arc::clone(&counter);
                    async move {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok::<(), HandlerError>(())
                    }
                }))
                .build();
        let addrs = serve_both(&service).await;
        for (n, addr) in addrs.into_iter().enumerate() {
            let mut client = connect(addr, "chatty-user", None).await;
            for i in 0..20 {
                send_text(&mut client, format!("{{\"n\": {i}}}")).await;
            }
            let mut rate_limited = 0;
            let close = loop {
                match next_seen(&mut client).await {
                    Seen::Json(frame) => {
                        assert_eq!(frame["type"], "error", "{addr}: {frame}");
                        assert_eq!(frame["code"], "rate_limited", "{addr}: {frame}");
                        rate_limited += 1;
                    }
                    Seen::Close(frame) => break frame,
                    Seen::Gone => panic!("{addr}: gone without a close frame"),
                }
            };
            assert_eq!(rate_limited, 3, "{addr}: the error-frame budget");
            assert_eq!(
                close,
                Some((1008, "message rate exceeded".to_owned())),
                "{addr}"
            );
            // The burst was handled; what came over it was not.
            assert_eq!(
                handled.load(std::sync::atomic::Ordering::SeqCst),
                5 * (n + 1),
                "{addr}"
            );
        }
        let stats = service.stats();
        assert_eq!(stats.messages_rate_limited, 8, "{stats}");
        assert_eq!(stats.closed_for_message_rate, 2, "{stats}");
    })
    .await;
}
