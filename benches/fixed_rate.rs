//! An open-loop load generator for latency at a fixed request rate (the role of wrk2, which
//! Debian does not package). Each of `--connections` keep-alive connections sends its share
//! of `--rate` requests per second on a fixed schedule; a request's latency counts from the
//! moment it was *due*, not when it was sent, so a stalled server shows up in the tail
//! instead of silently lowering the rate (coordinated omission).
//!
//!   fixed_rate --url http://127.0.0.1:18083/rest/api/content/101 --rate 5000 \
//!              --duration 10 --connections 32 [--header 'Authorization: Bearer …']
//!
//! Prints one JSON object: requests due, completed, errors and latency percentiles in µs.
//! Used by benches/load.sh.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

struct Args {
    url: http::Uri,
    rate: f64,
    duration: Duration,
    connections: usize,
    headers: Vec<(String, String)>,
}

fn args() -> Result<Args, String> {
    let mut url = None;
    let mut rate = None;
    let mut duration = Duration::from_secs(10);
    let mut connections = 32;
    let mut headers = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?.parse().map_err(|e| format!("--url: {e}"))?),
            "--rate" => rate = Some(value()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--duration" => {
                duration = Duration::from_secs_f64(
                    value()?.parse().map_err(|e| format!("--duration: {e}"))?,
                )
            }
            "--connections" => {
                connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--header" => {
                let h = value()?;
                let (k, v) = h.split_once(':').ok_or("--header wants 'Name: value'")?;
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            // `cargo bench` passes --bench to every harness=false target.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        rate: rate.ok_or("--rate is required")?,
        duration,
        connections: connections.max(1),
        headers,
    })
}

/// One connection's share of the schedule: latencies in µs, and errors.
async fn connection(
    args: std::sync::Arc<Args>,
    index: usize,
    start: Instant,
) -> Result<(Vec<u32>, u64, u64), String> {
    let authority = args
        .url
        .authority()
        .ok_or("the URL needs host:port")?
        .clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    // Spread the connections' schedules evenly over one interval.
    let offset = interval.mul_f64(index as f64 / args.connections as f64);
    let (mut latencies, mut due, mut errors) = (Vec::new(), 0u64, 0u64);
    for i in 0u32.. {
        let at = start + offset + interval * i;
        if at >= start + args.duration {
            break;
        }
        due += 1;
        tokio::time::sleep_until(at.into()).await;
        let mut req = http::Request::get(args.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str());
        for (k, v) in &args.headers {
            req = req.header(k, v);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        if ok {
            latencies.push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            errors += 1;
            if sender.ready().await.is_err() {
                break;
            }
        }
    }
    Ok((latencies, due, errors))
}

fn main() {
    let args = match args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("fixed_rate: {e}");
            std::process::exit(2);
        }
    };
    // One worker thread: the generator should take as little of the machine as it can.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (mut all, mut due, mut errors) = (Vec::new(), 0, 0);
    runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(200);
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(connection(args.clone(), i, start)))
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok((l, d, e))) => {
                    all.extend(l);
                    due += d;
                    errors += e;
                }
                Ok(Err(e)) => {
                    eprintln!("fixed_rate: {e}");
                    std::process::exit(1);
                }
                Err(e) => panic!("task: {e}"),
            }
        }
    });
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    println!(
        "{{\"rate\": {}, \"due\": {due}, \"ok\": {}, \"errors\": {errors}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"p999_us\": {}, \"max_us\": {}}}",
        args.rate,
        all.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0)
    );
}
