//! A recording wiki stand-in on loopback: every request it sees is kept for the test to inspect.

use super::*;

pub type UpBody = BoxBody<Bytes, Infallible>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A wiki stand-in on loopback that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub lookups: Arc<AtomicUsize>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests that came from clients through the gateway (not the gateway's own lookups).
    pub fn forwarded(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.headers.contains_key("x-guestgate-guest"))
            .collect()
    }

    pub fn lookup_count(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

pub fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<UpBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

/// Space of a content id in the stand-in wiki: 1xx ENG, 2xx HR, 3xx DOCS; 404 otherwise,
/// and 998 fails with 500.
pub fn space_of(id: u64) -> Option<&'static str> {
    match id {
        100..=199 => Some("ENG"),
        200..=299 => Some("HR"),
        300..=399 => Some("DOCS"),
        _ => None,
    }
}

/// The default wiki: content lookups answer like Confluence's REST API (slowly enough that
/// concurrent lookups overlap), `/slow` sleeps, everything else echoes what it saw.
pub fn default_handler() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if path == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if let Some(id) = path.strip_prefix("/rest/api/content/")
                && req.uri().query() == Some("expand=space")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let id: u64 = id.parse().unwrap_or(0);
                if id == 998 {
                    return json_response(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({}));
                }
                return match space_of(id) {
                    Some(space) => json_response(
                        StatusCode::OK,
                        serde_json::json!({"id": id.to_string(), "type": "page",
                            "space": {"key": space, "name": space, "type": "global"}}),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"statusCode": 404, "message": "No content found"}),
                    ),
                };
            }
            let user = req
                .headers()
                .get("x-guestgate-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            json_response(
                StatusCode::OK,
                serde_json::json!({"ok": true, "path": path, "user": user, "body_bytes": body}),
            )
        })
    })
}

pub async fn start_upstream() -> Upstream {
    start_upstream_with(default_handler()).await
}

pub async fn start_upstream_with(handler: Handler) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let lookups = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen2, lookups2, connections2) = (seen.clone(), lookups.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections2.fetch_add(1, Ordering::SeqCst);
            let (seen, lookups, handler) = (seen2.clone(), lookups2.clone(), handler.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, lookups, handler) = (seen.clone(), lookups.clone(), handler.clone());
                    async move {
                        if !req.headers().contains_key("x-guestgate-guest") {
                            lookups.fetch_add(1, Ordering::SeqCst);
                        }
                        seen.lock().unwrap().push(Seen {
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        Ok::<_, Infallible>(handler(req).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        lookups,
        connections,
    }
}
