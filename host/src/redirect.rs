//! A plain listener with `redirect_to_https`: every request is answered with a permanent
//! redirect to the same host and path over HTTPS, and nothing is proxied (the proxy's
//! service answers with it, so it is logged and counted as any answer).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::body::{self, ProxyBody};

/// `308 Permanent Redirect` (the method and body are kept, unlike 301) to
/// `https://HOST[:port]/path?query`; a request without a usable host gets 400.
pub(crate) fn redirect<B>(request: &Request<B>, port: u16) -> Response<ProxyBody> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = host.and_then(|host| {
        let name = host.host();
        let location = if port == 443 {
            format!("https://{name}{path}")
        } else {
            format!("https://{name}:{port}{path}")
        };
        HeaderValue::from_str(&location).ok()
    });
    let Some(location) = location else {
        let mut response = Response::new(body::full("a redirect to HTTPS needs a Host\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let mut response = Response::new(body::full(""));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, uri: &str, port: u16) -> (u16, Option<String>) {
        let mut request = Request::get(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        let response = redirect(&request.body(()).expect("request"), port);
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().expect("ascii").to_owned());
        (response.status().as_u16(), location)
    }

    #[test]
    fn redirects_keep_host_and_path_and_name_the_https_port() {
        assert_eq!(
            location(Some("example.com:8080"), "/a/b?c=d", 443),
            (308, Some("https://example.com/a/b?c=d".into()))
        );
        assert_eq!(
            location(Some("[::1]:80"), "/", 8443),
            (308, Some("https://[::1]:8443/".into()))
        );
        assert_eq!(location(None, "/", 443), (400, None));
        assert_eq!(location(Some("bad host"), "/", 443), (400, None));
    }
}
