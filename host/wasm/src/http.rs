//! Outgoing HTTP for steps: `wasi:http` requests go out only to the hosts
//! the step's manifest allows (settings substituted); every refused request
//! is logged with the host it tried.

use std::sync::{Arc, Mutex};

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// True when `host` at `port` matches an allowlist entry: `name:port`, or
/// `name` (the web's ports only, 80 and 443), or `*.suffix` (with or
/// without a port, likewise).
pub fn allowed(allow: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.to_ascii_lowercase();
    allow.iter().any(|entry| {
        let (name, want_port) = match entry.rsplit_once(':') {
            Some((n, p)) if p.parse::<u16>().is_ok() => (n, p.parse::<u16>().ok()),
            _ => (entry.as_str(), None),
        };
        let name_ok = match name.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == name,
        };
        let port_ok = match want_port {
            Some(p) => port == Some(p),
            None => matches!(port, Some(80 | 443)),
        };
        name_ok && port_ok
    })
}

/// The step's HTTP policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow: Vec<String>,
    /// Hosts refused so far (`host:port`), for the log.
    pub refused: Arc<Mutex<Vec<String>>>,
}

impl WasiHttpHooks for Policy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                )>,
            > + Send,
    > {
        _ = fut;
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().or_else(|| match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        if !allowed(&self.allow, &host, port) {
            let shown = format!("{host}:{}", port.unwrap_or(0));
            if let Ok(mut r) = self.refused.lock() {
                r.push(shown);
            }
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist() {
        let allow = vec![
            "hooks.example.com".to_string(),
            "*.amazonaws.com".to_string(),
            "127.0.0.1:9000".to_string(),
        ];
        assert!(allowed(&allow, "hooks.example.com", Some(443)));
        assert!(allowed(&allow, "s3.eu-west-1.amazonaws.com", Some(443)));
        assert!(!allowed(&allow, "amazonaws.com.evil.net", Some(443)));
        assert!(!allowed(&allow, "evil-amazonaws.com", Some(443)));
        assert!(allowed(&allow, "127.0.0.1", Some(9000)));
        assert!(!allowed(&allow, "127.0.0.1", Some(9001)));
        // A name without a port allows the web's ports only.
        assert!(!allowed(&allow, "hooks.example.com", Some(8443)));
        assert!(allowed(&allow, "hooks.example.com", Some(80)));
        assert!(!allowed(&[], "anything", Some(80)));
    }
}
