//! The request, response and local-reply types a filter works with. Changes are recorded as
//! they are made and sent back to weir in one batch when the hook returns, and reads see
//! them at once.

use crate::bindings::weir::plugin::types::{
    BodyChanges, HeaderOp, LocalResponse, RequestChanges, RequestHead, ResponseHead,
};

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Go on, with the changes made.
    Continue,
    /// Answer with this response instead.
    Respond(Reply),
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Action {
        Action::Respond(reply)
    }
}

/// A request on its way upstream.
#[derive(Debug, Clone)]
pub struct Request {
    head: RequestHead,
    ops: Vec<HeaderOp>,
    target_changed: bool,
}

impl Request {
    pub(crate) fn new(head: RequestHead) -> Request {
        Request {
            head,
            ops: Vec::new(),
            target_changed: false,
        }
    }

    pub(crate) fn into_ops(self) -> Vec<HeaderOp> {
        self.ops
    }

    pub(crate) fn into_changes(self) -> RequestChanges {
        let path = self.target_changed.then(|| match &self.head.query {
            Some(q) => format!("{}?{q}", self.head.path),
            None => self.head.path.clone(),
        });
        RequestChanges {
            headers: self.ops,
            path,
        }
    }

    /// The method, like `GET`.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The path, percent-encoded as received, without the query.
    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// The query string without `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.head.query.as_deref()
    }

    /// The first value of query parameter `name`, `+` and `%XX` decoded. `None` if absent.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == name).then(|| decode(value))
        })
    }

    /// The host the client asked for (`Host` or `:authority`), if any.
    pub fn authority(&self) -> Option<&str> {
        self.head.authority.as_deref()
    }

    /// The client's address, `ip:port`.
    pub fn client_addr(&self) -> &str {
        &self.head.client_address
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        &self.head.route
    }

    /// The request id weir logs and forwards as `x-request-id`.
    pub fn request_id(&self) -> &str {
        &self.head.request_id
    }

    /// The first value of header `name` (any case) as text; `None` if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head.headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case) as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        header(&self.head.headers, name)
    }

    /// Every header, in order, names in lower case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Replaces every value of header `name` with `value`.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        set(&mut self.head.headers, &mut self.ops, name, value.as_ref());
    }

    /// Adds a value to header `name`, keeping those it has.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        append(&mut self.head.headers, &mut self.ops, name, value.as_ref());
    }

    /// Removes header `name`.
    pub fn remove_header(&mut self, name: &str) {
        remove(&mut self.head.headers, &mut self.ops, name);
    }

    /// Sends the request upstream with this path (keeping the query). It must start with
    /// `/`; weir checks it and fails the request, naming the plugin, if it is not valid.
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.head.path = path.into();
        self.target_changed = true;
    }

    /// Sends the request upstream with this query (`None` removes it).
    pub fn set_query(&mut self, query: Option<String>) {
        self.head.query = query;
        self.target_changed = true;
    }
}

/// A response on its way back to the client.
#[derive(Debug, Clone)]
pub struct Response {
    head: ResponseHead,
    ops: Vec<HeaderOp>,
}

impl Response {
    pub(crate) fn new(head: ResponseHead) -> Response {
        Response {
            head,
            ops: Vec::new(),
        }
    }

    pub(crate) fn into_ops(self) -> Vec<HeaderOp> {
        self.ops
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The first value of header `name` (any case) as text; `None` if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head.headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order, names in lower case.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Replaces every value of header `name` with `value`.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        set(&mut self.head.headers, &mut self.ops, name, value.as_ref());
    }

    /// Adds a value to header `name`, keeping those it has.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        append(&mut self.head.headers, &mut self.ops, name, value.as_ref());
    }

    /// Removes header `name`.
    pub fn remove_header(&mut self, name: &str) {
        remove(&mut self.head.headers, &mut self.ops, name);
    }
}

/// A whole request or response body, given to the body hooks. Reads see replacements;
/// weir is sent the body only if it was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    bytes: Vec<u8>,
    replaced: bool,
}

impl Body {
    /// A body holding `bytes` (as weir passes it in; also for tests).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Body {
        Body {
            bytes: bytes.into(),
            replaced: false,
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The body as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }

    /// Replaces the body.
    pub fn replace(&mut self, bytes: impl Into<Vec<u8>>) {
        self.bytes = bytes.into();
        self.replaced = true;
    }

    /// Replaces the body with `value` serialised as JSON.
    pub fn set_json(&mut self, value: &impl serde::Serialize) -> Result<(), serde_json::Error> {
        let bytes = serde_json::to_vec(value)?;
        self.replace(bytes);
        Ok(())
    }

    /// Whether the body was replaced.
    pub fn is_replaced(&self) -> bool {
        self.replaced
    }

    pub(crate) fn into_changes(self, headers: Vec<HeaderOp>) -> BodyChanges {
        BodyChanges {
            headers,
            body: self.replaced.then_some(self.bytes),
        }
    }
}

/// A response the filter sends itself: built with [`Reply::new`] or a shortcut, returned
/// as [`Action::Respond`] (or `.into()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// An `application/json` response with `value` serialised.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Reply::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Reply {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (any case) as text.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        header(&self.headers, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub(crate) fn into_local(self) -> LocalResponse {
        LocalResponse {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn set(headers: &mut Vec<(String, Vec<u8>)>, ops: &mut Vec<HeaderOp>, name: &str, value: &[u8]) {
    let name = name.to_ascii_lowercase();
    headers.retain(|(n, _)| *n != name);
    headers.push((name.clone(), value.to_vec()));
    ops.push(HeaderOp::Set((name, value.to_vec())));
}

fn append(headers: &mut Vec<(String, Vec<u8>)>, ops: &mut Vec<HeaderOp>, name: &str, value: &[u8]) {
    let name = name.to_ascii_lowercase();
    headers.push((name.clone(), value.to_vec()));
    ops.push(HeaderOp::Append((name, value.to_vec())));
}

fn remove(headers: &mut Vec<(String, Vec<u8>)>, ops: &mut Vec<HeaderOp>, name: &str) {
    let name = name.to_ascii_lowercase();
    headers.retain(|(n, _)| *n != name);
    ops.push(HeaderOp::Remove(name));
}

/// Decodes `+` and `%XX` in a query component; invalid escapes are kept as written.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Request::new(RequestHead {
            method: "GET".into(),
            path,
            query,
            authority: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            client_address: "10.0.0.1:4000".into(),
            route: "r".into(),
            request_id: "id".into(),
        })
    }

    #[test]
    fn query_params_are_decoded() {
        let r = request("/s?q=a+b%21&empty=&flag&bad=%zz&q=second", &[]);
        assert_eq!(r.query_param("q").as_deref(), Some("a b!"));
        assert_eq!(r.query_param("empty").as_deref(), Some(""));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(r.query_param("missing"), None);
    }

    #[test]
    fn reads_see_changes_and_changes_are_recorded_in_order() {
        let mut r = request("/", &[("a", "1"), ("b", "2")]);
        r.set_header("A", "one");
        r.append_header("b", "3");
        r.remove_header("c");
        assert_eq!(r.header("a"), Some("one"));
        assert_eq!(r.headers().filter(|(n, _)| *n == "b").count(), 2);
        let changes = r.into_changes();
        let expected = vec![
            HeaderOp::Set(("a".into(), b"one".to_vec())),
            HeaderOp::Append(("b".into(), b"3".to_vec())),
            HeaderOp::Remove("c".into()),
        ];
        assert_eq!(format!("{:?}", changes.headers), format!("{expected:?}"));
        assert_eq!(changes.path, None, "the target is sent only if changed");
    }

    #[test]
    fn path_and_query_changes_make_one_target() {
        let mut r = request("/old?x=1", &[]);
        r.set_path("/new");
        assert_eq!(r.clone().into_changes().path.as_deref(), Some("/new?x=1"));
        r.set_query(None);
        assert_eq!(r.into_changes().path.as_deref(), Some("/new"));
    }

    #[test]
    fn reply_builders() {
        let reply = Reply::text(403, "no\n").header("X-Why", "policy");
        assert_eq!(reply.header_value("x-why"), Some("policy"));
        assert_eq!(
            reply.header_value("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let json = Reply::json(200, &serde_json::json!({"ok": true}));
        assert_eq!(json.body, br#"{"ok":true}"#);
    }
}
