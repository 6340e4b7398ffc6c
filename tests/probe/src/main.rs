//! `sluice-probe`: a tiny static HTTPS client for the initrd-only VM test.
//!
//! The initrd has no distro, so no curl: this client is what a statically linked workload
//! would be. It honours `HTTPS_PROXY` (HTTP `CONNECT`) and trusts exactly the PEM bundle in
//! `SSL_CERT_FILE` (what the guest agent installs and exports), so the request only succeeds
//! when the agent's CA install and proxy variables are right. It never disables verification.
//!
//! Usage: `sluice-probe https://HOST[:PORT]/PATH [-H 'Name: value']... [--auth-env NAME]`
//! Prints `probe: status=<code>`, the response headers and the body; exits 0 when the
//! request completed (any HTTP status), 2 on usage errors, 1 on any other failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args).and_then(|req| run(&req)) {
        Ok(()) => {}
        Err(ProbeError::Usage(msg)) => {
            eprintln!("probe: usage error: {msg}");
            std::process::exit(2);
        }
        Err(err) => {
            println!("probe: failed: {err}");
            std::process::exit(1);
        }
    }
}

#[derive(Debug)]
enum ProbeError {
    Usage(String),
    Failed(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Usage(m) | ProbeError::Failed(m) => f.write_str(m),
        }
    }
}

fn fail(context: &str, err: impl std::fmt::Display) -> ProbeError {
    ProbeError::Failed(format!("{context}: {err}"))
}

#[derive(Debug)]
struct Request {
    host: String,
    port: u16,
    path: String,
    headers: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Request, ProbeError> {
    let mut url = None;
    let mut headers = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--auth-env" {
            // `Authorization: Bearer $NAME`, read from the environment the agent set up:
            // keeps the kernel command line free of spaces and proves the placeholder arrived.
            let name = it
                .next()
                .ok_or_else(|| ProbeError::Usage("--auth-env needs a variable name".into()))?;
            let value = std::env::var(name)
                .map_err(|_| ProbeError::Usage(format!("environment variable {name} not set")))?;
            headers.push(format!("Authorization: Bearer {value}"));
        } else if arg == "-H" {
            let h = it
                .next()
                .ok_or_else(|| ProbeError::Usage("-H needs a value".into()))?;
            headers.push(h.clone());
        } else if url.is_none() {
            url = Some(arg.clone());
        } else {
            return Err(ProbeError::Usage(format!("unexpected argument {arg:?}")));
        }
    }
    let url = url.ok_or_else(|| ProbeError::Usage("missing URL".into()))?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ProbeError::Usage("URL must start with https://".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse()
                .map_err(|_| ProbeError::Usage(format!("bad port in {url:?}")))?,
        ),
        None => (authority.to_string(), 443),
    };
    Ok(Request {
        host,
        port,
        path: path.to_string(),
        headers,
    })
}

/// Reads `SSL_CERT_FILE` into a root store; no built-in roots.
fn root_store() -> Result<rustls::RootCertStore, ProbeError> {
    let path = std::env::var("SSL_CERT_FILE").map_err(|_| fail("SSL_CERT_FILE", "not set"))?;
    let pem = std::fs::read(&path).map_err(|e| fail(&format!("reading {path}"), e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(&format!("parsing {path}"), e))?;
        // Distro bundles hold a few certificates rustls rejects; skip those, keep the rest.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(fail(&path, "no usable certificates"));
    }
    Ok(roots)
}

/// Opens a TCP connection to the target, through `HTTPS_PROXY` when set.
fn connect(host: &str, port: u16) -> Result<TcpStream, ProbeError> {
    let proxy = std::env::var("HTTPS_PROXY")
        .or_else(|_| std::env::var("https_proxy"))
        .ok();
    let Some(proxy) = proxy else {
        return TcpStream::connect((host, port)).map_err(|e| fail("direct connect", e));
    };
    let addr = proxy
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut tcp = TcpStream::connect(&addr).map_err(|e| fail(&format!("proxy {addr}"), e))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| fail("socket", e))?;
    write!(
        tcp,
        "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
    )
    .map_err(|e| fail("CONNECT", e))?;
    // Read the proxy's answer byte by byte so nothing of the TLS stream is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).map_err(|e| fail("CONNECT answer", e))?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(fail("CONNECT answer", "proxy closed the connection"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        // Show the proxy's refusal (status and reason header) to the caller.
        println!("probe: proxy refused CONNECT: {}", head.trim_end());
        return Err(fail("CONNECT", status_line));
    }
    Ok(tcp)
}

fn run(req: &Request) -> Result<(), ProbeError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("TLS config", e))?
    .with_root_certificates(root_store()?)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(req.host.clone())
        .map_err(|e| ProbeError::Usage(format!("bad host name: {e}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| fail("TLS", e))?;
    let tcp = connect(&req.host, req.port)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n",
        req.path, req.host
    );
    for h in &req.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())
        .map_err(|e| fail("TLS handshake or request", e))?;
    let mut reader = BufReader::new(tls);
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| fail("response", e))?;
    let code = status.split_whitespace().nth(1).unwrap_or("?").to_string();
    println!("probe: status={code}");
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| fail("response headers", e))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse::<usize>().ok();
            }
        }
        println!("probe: header {line}");
    }
    let mut body = Vec::new();
    match content_length {
        Some(n) => {
            body.resize(n, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| fail("response body", e))?;
        }
        None => {
            // Connection: close was requested; a missing close_notify is not worth failing on.
            let _ = reader.read_to_end(&mut body);
        }
    }
    println!("probe: body {}", String::from_utf8_lossy(&body).trim_end());
    Ok(())
}
