//! The request and response as a route's plugins see them: hyper's own heads and what weir
//! knows about the request. A 0.3.0 hook is lent a view whole and reads it on demand; the
//! WIT records that older plugins and body hooks take are made from it for each such call.

use std::sync::{Arc, LazyLock};

use http::header::{HeaderMap, HeaderValue};
use http::{StatusCode, request};

use super::{RequestHead, ResponseHead};

/// The request through the chain: its head as it will be sent on (every plugin's changes
/// are applied to `parts` as they are returned), and what the plugins may ask about it.
/// (`pub` because the generated bindings re-export it.)
#[derive(Debug)]
pub struct RequestView {
    pub(crate) parts: request::Parts,
    /// The host the client asked for (`Host` or `:authority`).
    authority: Option<HeaderValue>,
    /// The client's `ip:port`.
    client: Arc<str>,
    route: Arc<str>,
    /// The request id as text (made once: every hook call logs under it).
    request_id: String,
}

/// The response through the chain's response hooks. (`pub` as [`RequestView`].)
#[derive(Debug)]
pub struct ResponseView {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

impl RequestView {
    /// The view of a routed request.
    pub fn new(
        parts: request::Parts,
        authority: Option<HeaderValue>,
        client: Arc<str>,
        route: Arc<str>,
        request_id: &HeaderValue,
    ) -> RequestView {
        RequestView {
            parts,
            authority,
            client,
            route,
            // Lossy only for a client-sent id that is not UTF-8.
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
        }
    }

    /// What the chain holds while its view is lent to a call (allocates nothing).
    pub(crate) fn placeholder() -> RequestView {
        RequestView {
            parts: request::Request::new(()).into_parts().0,
            authority: None,
            client: empty(),
            route: empty(),
            request_id: String::new(),
        }
    }

    /// The request as it is now.
    pub fn parts(&self) -> &request::Parts {
        &self.parts
    }

    /// The request as it is now, to send on; the view keeps nothing.
    pub fn into_parts(self) -> request::Parts {
        self.parts
    }

    /// The request as it is now, to send on, leaving a copy of its method, target and
    /// headers in the view for the response hooks (which see the request as it was sent).
    /// The extensions (hyper's upgrade handle among them) go with the request.
    pub fn split_off_parts(&mut self) -> request::Parts {
        let mut copy = request::Request::new(()).into_parts().0;
        copy.method = self.parts.method.clone();
        copy.uri = self.parts.uri.clone();
        copy.version = self.parts.version;
        copy.headers = self.parts.headers.clone();
        std::mem::replace(&mut self.parts, copy)
    }

    /// The host the client asked for, if it is text.
    pub(crate) fn authority(&self) -> Option<&str> {
        self.authority.as_ref().and_then(|a| a.to_str().ok())
    }

    pub(crate) fn client(&self) -> &str {
        &self.client
    }

    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The request id, for logs and for the plugins (lossy if a client sent a non-UTF-8 one).
    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The WIT record of the request, for a hook that takes it whole.
    pub fn record(&self) -> RequestHead {
        RequestHead {
            method: self.parts.method.as_str().to_owned(),
            path: self.parts.uri.path().to_owned(),
            query: self.parts.uri.query().map(str::to_owned),
            authority: self.authority().map(str::to_owned),
            headers: header_list(&self.parts.headers),
            client_address: self.client.to_string(),
            route: self.route.to_string(),
            request_id: self.request_id.clone(),
        }
    }
}

/// An empty text, shared rather than allocated for each placeholder.
fn empty() -> Arc<str> {
    static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// The WIT record of a response head.
pub(crate) fn response_record(status: StatusCode, headers: &HeaderMap) -> ResponseHead {
    ResponseHead {
        status: status.as_u16(),
        headers: header_list(headers),
    }
}

/// Every header as the WIT records carry them.
pub(crate) fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RequestView {
        let (mut parts, ()) = request::Request::get("/a/b?x=1")
            .header("host", "api.example.com")
            .header("x-tag", "one")
            .header("x-tag", "two")
            .body(())
            .expect("request")
            .into_parts();
        parts.extensions.insert(7_u32);
        RequestView::new(
            parts,
            Some(HeaderValue::from_static("api.example.com")),
            Arc::from("10.0.0.7:50412"),
            Arc::from("api"),
            &HeaderValue::from_static("id-1"),
        )
    }

    #[test]
    fn the_record_carries_every_field_and_header() {
        let record = view().record();
        assert_eq!(record.method, "GET");
        assert_eq!(record.path, "/a/b");
        assert_eq!(record.query.as_deref(), Some("x=1"));
        assert_eq!(record.authority.as_deref(), Some("api.example.com"));
        assert_eq!(record.client_address, "10.0.0.7:50412");
        assert_eq!(record.route, "api");
        assert_eq!(record.request_id, "id-1");
        let tags: Vec<&[u8]> = record
            .headers
            .iter()
            .filter(|(n, _)| n == "x-tag")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(tags, [b"one".as_slice(), b"two".as_slice()]);
    }

    #[test]
    fn split_off_parts_sends_the_extensions_and_keeps_a_copy_of_the_head() {
        let mut view = view();
        let sent = view.split_off_parts();
        assert_eq!(sent.extensions.get::<u32>(), Some(&7));
        assert_eq!(view.parts().extensions.get::<u32>(), None);
        assert_eq!(view.parts().uri, sent.uri);
        assert_eq!(view.parts().headers, sent.headers);
        assert_eq!(view.parts().method, sent.method);
    }

    #[test]
    fn the_placeholder_is_empty() {
        let placeholder = RequestView::placeholder();
        assert!(placeholder.parts().headers.is_empty());
        assert_eq!(placeholder.route(), "");
        assert_eq!(placeholder.client(), "");
    }
}
