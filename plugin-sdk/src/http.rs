//! The request, response and local-reply types a filter works with. Reads fetch from weir
//! only what is read; changes are recorded as they are made and sent back to weir in one
//! batch when the hook returns, and reads see them at once.

use std::cell::OnceCell;

use crate::ops::{Change, Kind, Ops};

use crate::bindings::weir::plugin::types::{
    BodyChanges, HeaderOp, LocalResponse, Request as HostRequest, RequestHead,
    Response as HostResponse, ResponseHead,
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

/// The client connection's TLS, as [`Request::tls`] tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The server name the client asked for (SNI), lower case.
    pub server_name: Option<String>,
    /// The verified client certificate's subject, RFC 4514 (`CN=alice,O=Example`).
    pub client_subject: Option<String>,
}

impl From<crate::bindings::weir::plugin::types::TlsInfo> for Tls {
    fn from(info: crate::bindings::weir::plugin::types::TlsInfo) -> Tls {
        Tls {
            version: info.version,
            server_name: info.server_name,
            client_subject: info.client_subject,
        }
    }
}

/// The changes a request hook made to the request's response cache key
/// ([`Request::set_cache_key`], [`Request::add_cache_key`]; weir:plugin 0.3.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheKeyChanges {
    /// The key instead of weir's, if set (the last one set wins).
    pub(crate) replaced: Option<String>,
    /// Parts added after it, in order.
    pub(crate) added: Vec<String>,
}

impl CacheKeyChanges {
    /// Whether the hook changed nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.replaced.is_none() && self.added.is_empty()
    }
}

/// What a request hook leaves besides its changes to the request: header changes for the
/// response, the response cache key, and the method and body (weir:plugin 0.3.6), sent to
/// weir through the request's handle.
#[derive(Debug, Default)]
pub(crate) struct Left {
    /// Header changes for the response, in order.
    pub(crate) response_ops: Ops,
    /// Changes to the response cache key.
    pub(crate) cache_key: CacheKeyChanges,
    /// The method to send the request with, if the filter set one.
    pub(crate) method: Option<String>,
    /// The body to send instead of the client's, if the filter gave one.
    pub(crate) body: Option<Vec<u8>>,
}

impl Left {
    /// Whether the request hook made any change that only `on_request` can make through the
    /// request's handle (header changes for the response, the cache key, the method, the
    /// body).
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if !self.response_ops.is_empty() {
            names.push("response header changes");
        }
        if !self.cache_key.is_empty() {
            names.push("cache key changes");
        }
        if self.method.is_some() {
            names.push("the method (set_method)");
        }
        if self.body.is_some() {
            names.push("the body (set_body)");
        }
        names
    }
}

/// A request on its way upstream.
///
/// weir passes it either whole (body hooks, tests) or as a handle read on demand (head hooks
/// of a 0.3.0 plugin): then each field and each header is fetched from weir the first time
/// it is read, and only then. The API is the same either way.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    host: Option<&'a HostRequest>,
    /// Its fields, in a box made at the first read: a hook that reads none (and the
    /// request's drop) does not pay for a few hundred bytes of empty cells.
    fields: OnceCell<Box<Fields>>,
    headers: Headers<'a>,
    target_changed: bool,
    /// Header changes for the response, in order (see [`Request::set_response_header`]).
    response_ops: Ops,
    /// Changes to the response cache key (see [`Request::set_cache_key`]).
    cache_key: CacheKeyChanges,
    /// Whether [`Request::set_method`] was called (the new method is in `method`).
    method_changed: bool,
    /// The body given with [`Request::set_body`].
    body: Option<Vec<u8>>,
}

/// A request's fields: each read from weir the first time it is read, or given whole.
#[derive(Debug, Clone, Default)]
struct Fields {
    method: OnceCell<String>,
    path: OnceCell<String>,
    query: OnceCell<Option<String>>,
    authority: OnceCell<Option<String>>,
    client_address: OnceCell<String>,
    route: OnceCell<String>,
    request_id: OnceCell<String>,
    tls: OnceCell<Option<Tls>>,
}

impl Request<'static> {
    /// A request passed whole.
    pub(crate) fn new(head: RequestHead) -> Request<'static> {
        Request {
            host: None,
            fields: OnceCell::from(Box::new(Fields {
                method: OnceCell::from(head.method),
                path: OnceCell::from(head.path),
                query: OnceCell::from(head.query),
                authority: OnceCell::from(head.authority),
                client_address: OnceCell::from(head.client_address),
                route: OnceCell::from(head.route),
                request_id: OnceCell::from(head.request_id),
                tls: OnceCell::from(None),
            })),
            headers: Headers::whole(head.headers),
            target_changed: false,
            response_ops: Ops::default(),
            cache_key: CacheKeyChanges::default(),
            method_changed: false,
            body: None,
        }
    }
}

impl<'a> Request<'a> {
    /// A request read from weir on demand.
    pub(crate) fn lazy(host: &'a HostRequest) -> Request<'a> {
        Request {
            host: Some(host),
            fields: OnceCell::new(),
            headers: Headers::lazy(host),
            target_changed: false,
            response_ops: Ops::default(),
            cache_key: CacheKeyChanges::default(),
            method_changed: false,
            body: None,
        }
    }

    /// The request with the client's TLS as a test says it is.
    #[cfg(feature = "testing")]
    pub(crate) fn with_tls(mut self, tls: Option<Tls>) -> Request<'a> {
        self.fields_mut().tls = OnceCell::from(tls);
        self
    }

    /// The changes to the request, and what is left for weir through the request's handle:
    /// header changes for the response, the cache key's changes, the method and the body.
    /// The changes to the request as the filter made them (its header changes, its new
    /// target if it set one), and what it left for weir through the request's handle.
    pub(crate) fn take_answer(&mut self) -> (Ops, Option<String>, Left) {
        let path = self.target_changed.then(|| match self.query() {
            Some(q) => format!("{}?{q}", self.path()),
            None => self.path().to_owned(),
        });
        let (headers, left) = self.take_left();
        (headers, path, left)
    }

    /// What the filter left through the request's handle, without the request's own changes
    /// (for a hook that cannot leave them: they are dropped with a warning).
    pub(crate) fn into_left(mut self) -> (Vec<HeaderOp>, Left) {
        let (ops, left) = self.take_left();
        (ops.to_header_ops(), left)
    }

    /// The request's header changes and what it left, taken out of it in place: under wasm,
    /// moving the whole `Request` into a call is a `memory.copy` of a few hundred bytes.
    fn take_left(&mut self) -> (Ops, Left) {
        let method = self.method_changed.then(|| self.method().to_owned());
        let left = Left {
            response_ops: std::mem::take(&mut self.response_ops),
            cache_key: std::mem::take(&mut self.cache_key),
            method,
            body: self.body.take(),
        };
        (std::mem::take(&mut self.headers.ops), left)
    }

    /// A field of the request: known already, or read from weir now and kept.
    fn field<T>(&self, cell: fn(&Fields) -> &OnceCell<T>, read: fn(&HostRequest) -> T) -> &T
    where
        T: Default,
    {
        cell(self.fields.get_or_init(Box::default))
            .get_or_init(|| self.host.map(read).unwrap_or_default())
    }

    /// The fields, to change one.
    fn fields_mut(&mut self) -> &mut Fields {
        if self.fields.get().is_none() {
            self.fields = OnceCell::from(Box::default());
        }
        match self.fields.get_mut() {
            Some(fields) => fields,
            None => unreachable!("the fields were made above"),
        }
    }

    /// The method, like `GET`.
    pub fn method(&self) -> &str {
        self.field(|f| &f.method, HostRequest::method).as_str()
    }

    /// The path, percent-encoded as received, without the query.
    pub fn path(&self) -> &str {
        self.field(|f| &f.path, HostRequest::path).as_str()
    }

    /// The query string without `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.field(|f| &f.query, HostRequest::query).as_deref()
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
        self.field(|f| &f.authority, HostRequest::authority)
            .as_deref()
    }

    /// The client's address, `ip:port`.
    pub fn client_addr(&self) -> &str {
        self.field(|f| &f.client_address, HostRequest::client_address)
            .as_str()
    }

    /// The name of the route that matched.
    pub fn route(&self) -> &str {
        self.field(|f| &f.route, HostRequest::route).as_str()
    }

    /// The request id weir logs and forwards as `x-request-id`.
    pub fn request_id(&self) -> &str {
        self.field(|f| &f.request_id, HostRequest::request_id)
            .as_str()
    }

    /// What the client's TLS connection to weir settled; `None` for plain HTTP. A listener
    /// with `client_auth` verified the client certificate whose subject it names.
    pub fn tls(&self) -> Option<&Tls> {
        self.field(|f| &f.tls, |host| host.tls().map(Tls::from))
            .as_ref()
    }

    /// The first value of header `name` (any case) as text; `None` if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .first(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of header `name` (any case) as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.first(name)
    }

    /// Every header, in order, names in lower case. On a request read on demand this reads
    /// them all from weir: prefer [`Request::header`] when you know the name.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .all()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Replaces every value of header `name` with `value`.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers.change(Kind::Set, name, value.as_ref());
    }

    /// Adds a value to header `name`, keeping those it has.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers.change(Kind::Append, name, value.as_ref());
    }

    /// Removes header `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.change(Kind::Remove, name, &[]);
    }

    /// Sets header `name` to `value` on the response to this request, whichever response
    /// the client gets: the upstream's, or a local reply from a filter after this one.
    /// weir applies it in the response phase at this filter's place (before this filter's
    /// own `on_response`, if it has one), so the filter need not be called again to add a
    /// header it decided while it saw the request. Not applied if this filter answers the
    /// request itself (put the header in the [`Reply`]), nor to weir's own error responses
    /// (502, 504, ...). For `on_request` only: changes made in `on_request_body` are
    /// dropped, with a warning in weir's log.
    pub fn set_response_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.response_ops.push(Kind::Set, name, value.as_ref());
    }

    /// Adds a value to header `name` of the response, keeping those it has; applied as
    /// [`Request::set_response_header`] is.
    pub fn append_response_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.response_ops.push(Kind::Append, name, value.as_ref());
    }

    /// Removes header `name` from the response; applied as [`Request::set_response_header`]
    /// is.
    pub fn remove_response_header(&mut self, name: &str) {
        self.response_ops.push(Kind::Remove, name, &[]);
    }

    /// Stores and looks up the response to this request under `key` in the route's response
    /// cache, instead of weir's own key, `scheme://host/path?query` (the path and query as
    /// the filters left them): for example the URL without a tracking query parameter, so
    /// requests that differ only in it share one stored response. Parts added with
    /// [`Request::add_cache_key`] still follow it; a later call, in this filter or a later
    /// one, replaces it.
    ///
    /// It matters only on a route with `cache`, and only in `on_request` (made in
    /// `on_request_body` it is dropped, with a warning in weir's log); weir takes it when the
    /// hook returns, unless the filter answers the request itself. At most 1,024 bytes and
    /// no control characters (CR, LF, NUL, ...): weir fails the call otherwise (500, or the
    /// plugin skipped if it is `fail_open`), and the cache key changes of a failed call are
    /// dropped. Needs weir with `weir:plugin` 0.3.5.
    ///
    /// ```
    /// # use weir_plugin::{Action, Request};
    /// fn on_request(request: &mut Request) -> Action {
    ///     // One stored copy whatever the campaign parameter says.
    ///     if let Some(query) = request.query().filter(|q| q.contains("utm_source=")) {
    ///         let kept: Vec<&str> =
    ///             query.split('&').filter(|p| !p.starts_with("utm_source=")).collect();
    ///         let host = request.authority().unwrap_or_default();
    ///         let mut key = format!("https://{host}{}", request.path());
    ///         if !kept.is_empty() {
    ///             key = format!("{key}?{}", kept.join("&"));
    ///         }
    ///         request.set_cache_key(&key);
    ///     }
    ///     Action::Continue
    /// }
    /// ```
    pub fn set_cache_key(&mut self, key: &str) {
        self.cache_key.replaced = Some(key.to_owned());
    }

    /// Adds `part` to the response cache key of this request, after a space: for example a
    /// tenant id, so that one URL is stored once per tenant. Parts follow the key (weir's,
    /// or the one set with [`Request::set_cache_key`]) in the order they are added, the
    /// filters' in chain order. As [`Request::set_cache_key`]: only on a route with `cache`
    /// and only in `on_request`; at most 1,024 bytes without control characters, and at
    /// most 16 parts per request from every filter together, or weir fails the call.
    ///
    /// ```
    /// # use weir_plugin::{Action, Request};
    /// fn on_request(request: &mut Request) -> Action {
    ///     if let Some(tenant) = request.header("x-tenant").map(str::to_owned) {
    ///         request.add_cache_key(&tenant);
    ///     }
    ///     Action::Continue
    /// }
    /// ```
    pub fn add_cache_key(&mut self, part: &str) {
        self.cache_key.added.push(part.to_owned());
    }

    /// Sends the request upstream with `method` instead of the one it has: for example a
    /// `GET` made the `POST` of a gRPC call. Reads ([`Request::method`]) see it at once;
    /// weir takes it when `on_request` returns, later filters and the upstream see it, and
    /// a later call replaces it.
    ///
    /// Methods are case-sensitive; weir fails the call (500, or the plugin skipped if it is
    /// `fail_open`) for one that is not an HTTP token of at most 32 bytes, and for `CONNECT`.
    /// Only in `on_request`: made in `on_request_body` it is dropped, with a warning in
    /// weir's log. Needs weir with `weir:plugin` 0.3.6.
    ///
    /// ```
    /// # use weir_plugin::{Action, Request};
    /// fn on_request(request: &mut Request) -> Action {
    ///     // A search sent as a GET with a query goes upstream as a POST with a JSON body.
    ///     if request.method() == "GET" && request.path() == "/search" {
    ///         let term = request.query_param("q").unwrap_or_default();
    ///         let body = serde_json::json!({ "query": term }).to_string();
    ///         request.set_method("POST");
    ///         request.set_body(body);
    ///         request.set_header("content-type", "application/json");
    ///         request.set_query(None);
    ///     }
    ///     Action::Continue
    /// }
    /// ```
    pub fn set_method(&mut self, method: &str) {
        self.fields_mut().method = OnceCell::from(method.to_owned());
        self.method_changed = true;
    }

    /// Sends `body` upstream instead of the client's body, as nginx's `proxy_set_body`
    /// does: for example the message a `GET`'s path and query were turned into. The
    /// client's body, if it sent one, is neither read nor sent, and the `on_request_body`
    /// hooks of later filters (and of this one) see this body. weir takes it when
    /// `on_request` returns and sets `content-length` to its length, removing
    /// `transfer-encoding` and `content-encoding`; set `content-type` yourself. A later call
    /// replaces it.
    ///
    /// At most 1 MiB. A body that is not empty needs a method that gives content a meaning:
    /// with `GET`, `HEAD`, `DELETE` or `TRACE` (as the request leaves `on_request`) weir fails
    /// the call (500, or the plugin skipped if it is `fail_open`); [`Request::set_method`]
    /// in the same hook. Only in `on_request`, as `set_method`. Needs weir with
    /// `weir:plugin` 0.3.6. See [`Request::set_method`] for an example.
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
    }

    /// Sends the request upstream with this path (keeping the query). It must start with
    /// `/`; weir checks it and fails the request, naming the plugin, if it is not valid.
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.fields_mut().path = OnceCell::from(path.into());
        self.target_changed = true;
    }

    /// Sends the request upstream with this query (`None` removes it).
    pub fn set_query(&mut self, query: Option<String>) {
        self.fields_mut().query = OnceCell::from(query);
        self.target_changed = true;
    }
}

/// A response on its way back to the client; passed whole or read on demand, as a
/// [`Request`] is.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    host: Option<&'a HostResponse>,
    status: OnceCell<u16>,
    headers: Headers<'a>,
    /// The trailers, read from weir on first use; `None` where there are none to read (the
    /// head hooks, which run before the body).
    trailers: Option<OnceCell<FieldList>>,
}

/// Header or trailer fields as weir passes them: lower-case names and raw values, in order.
type FieldList = Vec<(String, Vec<u8>)>;

impl Response<'static> {
    /// A response passed whole.
    pub(crate) fn new(head: ResponseHead) -> Response<'static> {
        Response {
            host: None,
            status: OnceCell::from(head.status),
            headers: Headers::whole(head.headers),
            trailers: None,
        }
    }

    /// A response passed whole to `on_response_body`, whose trailers weir tells on demand.
    pub(crate) fn with_body(head: ResponseHead) -> Response<'static> {
        Response {
            trailers: Some(OnceCell::new()),
            ..Response::new(head)
        }
    }
}

impl<'a> Response<'a> {
    /// A response read from weir on demand.
    pub(crate) fn lazy(host: &'a HostResponse) -> Response<'a> {
        Response {
            host: Some(host),
            status: OnceCell::new(),
            headers: Headers::lazy(host),
            trailers: None,
        }
    }

    pub(crate) fn into_ops(self) -> Vec<HeaderOp> {
        self.headers.ops.to_header_ops()
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        *self
            .status
            .get_or_init(|| self.host.map(HostResponse::status).unwrap_or_default())
    }

    /// The first value of header `name` (any case) as text; `None` if absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .first(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, in order, names in lower case (on a response read on demand, this
    /// reads them all from weir).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .all()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The first value of trailer `name` (any case) as text: a field the upstream sent
    /// after the body, such as a gRPC call's `grpc-status` after its messages. Only in
    /// `on_response_body`, which sees the whole body and so what came after it; `None` in
    /// `on_response` (the body has not arrived), for a response without trailers, and for
    /// one that is absent or not UTF-8. Read from weir the first time a trailer is asked
    /// for. Needs weir with `weir:plugin` 0.3.6.
    ///
    /// A response whose body passed the body hooks goes to the client without its
    /// trailers: a filter that turns them into something the client sees (a status, a
    /// header) does so here.
    ///
    /// ```
    /// # use weir_plugin::{Action, Body, Reply, Response};
    /// fn on_response_body(response: &mut Response, _body: &mut Body) -> Action {
    ///     match response.trailer("grpc-status") {
    ///         Some(code) if code != "0" => Reply::text(502, "the call failed\n").into(),
    ///         _ => Action::Continue,
    ///     }
    /// }
    /// ```
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every trailer, in order, names in lower case; empty where [`Response::trailer`]
    /// finds none.
    pub fn trailers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let all = match &self.trailers {
            Some(cell) => cell.get_or_init(trailers::read).as_slice(),
            None => &[],
        };
        all.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Replaces every value of header `name` with `value`.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers.change(Kind::Set, name, value.as_ref());
    }

    /// Adds a value to header `name`, keeping those it has.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.headers.change(Kind::Append, name, value.as_ref());
    }

    /// Removes header `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.change(Kind::Remove, name, &[]);
    }
}

/// Where the headers of a head read on demand come from: weir's `request` or `response`
/// handle (or, in unit tests, a stand-in).
pub(crate) trait HeaderSource: std::fmt::Debug {
    /// The first value of `name`.
    fn first(&self, name: &str) -> Option<Vec<u8>>;
    /// Every header, in order.
    fn every(&self) -> Vec<(String, Vec<u8>)>;
}

impl HeaderSource for HostRequest {
    fn first(&self, name: &str) -> Option<Vec<u8>> {
        self.header(name)
    }

    fn every(&self) -> Vec<(String, Vec<u8>)> {
        self.headers()
    }
}

impl HeaderSource for HostResponse {
    fn first(&self, name: &str) -> Option<Vec<u8>> {
        self.header(name)
    }

    fn every(&self) -> Vec<(String, Vec<u8>)> {
        self.headers()
    }
}

/// How many single headers a head read on demand remembers before it reads them all.
const REMEMBERED_HEADERS: usize = 8;

/// A header read on its own: its lower-case name and first value.
type Remembered = (String, Option<Vec<u8>>);

/// A head's headers and the changes made to them. Passed whole, the list is kept with every
/// change applied. Read on demand, the changes are an overlay: a read looks at the changes
/// to that name first and asks weir only for what they leave open.
#[derive(Debug, Clone)]
struct Headers<'a> {
    host: Option<&'a dyn HeaderSource>,
    /// Every header with the changes applied, once known.
    all: OnceCell<Vec<(String, Vec<u8>)>>,
    /// Single headers read from weir, before any change: (lower-case name, first value); in
    /// a box made at the first such read.
    read: OnceCell<Box<[OnceCell<Remembered>; REMEMBERED_HEADERS]>>,
    /// The changes, in order: what is sent back to weir.
    ops: Ops,
}

impl<'a> Headers<'a> {
    fn whole(list: Vec<(String, Vec<u8>)>) -> Headers<'a> {
        Headers {
            host: None,
            all: OnceCell::from(list),
            read: Default::default(),
            ops: Ops::default(),
        }
    }

    fn lazy(host: &'a dyn HeaderSource) -> Headers<'a> {
        Headers {
            host: Some(host),
            all: OnceCell::new(),
            read: Default::default(),
            ops: Ops::default(),
        }
    }

    /// Every header with the changes applied (read from weir the first time).
    fn all(&self) -> &Vec<(String, Vec<u8>)> {
        self.all.get_or_init(|| {
            let mut list = self.host.map(|h| h.every()).unwrap_or_default();
            for op in self.ops.iter() {
                apply(&mut list, op);
            }
            list
        })
    }

    /// The first value of `name` (any case), changes included.
    fn first(&self, name: &str) -> Option<&[u8]> {
        if let Some(all) = self.all.get() {
            return header(all, name);
        }
        // The last `set` or `remove` of the name decides, with what was appended after it.
        let named = |op: Change<'_>| {
            op.kind != Kind::Append && op.name.eq_ignore_ascii_case(name.as_bytes())
        };
        if let Some((last, op)) = self.ops.iter().enumerate().rfind(|&(_, op)| named(op)) {
            return match op.kind {
                Kind::Set => Some(op.value),
                _ => appended(self.ops.from(last + 1), name),
            };
        }
        match self.remembered(name) {
            Some(original) => original.or_else(|| appended(self.ops.iter(), name)),
            // Too many names asked for one at a time: read them all once.
            None => header(self.all(), name),
        }
    }

    /// The first value weir has for `name`, read once per name; `None` when every slot is
    /// taken by other names.
    fn remembered(&self, name: &str) -> Option<Option<&[u8]>> {
        let host = self.host?;
        for slot in self.read.get_or_init(Box::default).iter() {
            match slot.get() {
                Some((n, v)) if n.eq_ignore_ascii_case(name) => return Some(v.as_deref()),
                Some(_) => continue,
                None => {
                    let (_, v) = slot.get_or_init(|| (lower_case(name), host.first(name)));
                    return Some(v.as_deref());
                }
            }
        }
        None
    }

    /// Records a change (its name lower-cased) and applies it to the whole list if that is
    /// known.
    fn change(&mut self, kind: Kind, name: &str, value: &[u8]) {
        self.ops.push(kind, name, value);
        if let (Some(all), Some(op)) = (self.all.get_mut(), self.ops.iter().next_back()) {
            apply(all, op);
        }
    }
}

/// `name` in ASCII lower case. Filters name headers in lower case almost always, so the
/// name is looked at eight bytes at a time for an upper-case letter and copied whole when it
/// has none: a byte-at-a-time loop under wasm, with its interruption check per byte, costs
/// more than the copy.
fn lower_case(name: &str) -> String {
    let mut lower = name.to_owned();
    if has_upper_case(name.as_bytes()) {
        lower.make_ascii_lowercase();
    }
    lower
}

/// Whether `bytes` hold an ASCII upper-case letter: eight bytes at a time, the last word
/// overlapping the one before it, and a name shorter than a word as two overlapping halves,
/// so that no byte is looked at on its own but in names of one to three bytes.
pub(crate) fn has_upper_case(bytes: &[u8]) -> bool {
    if let Some(last) = bytes.last_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        return words.iter().any(|&word| upper_in(u64::from_le_bytes(word)))
            || upper_in(u64::from_le_bytes(*last));
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        let (first, last) = (u32::from_le_bytes(*first), u32::from_le_bytes(*last));
        return upper_in(u64::from(first) | u64::from(last) << 32);
    }
    bytes.iter().any(u8::is_ascii_uppercase)
}

/// Whether any of `word`'s eight bytes is an ASCII upper-case letter.
fn upper_in(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Per byte below 0x80: adding 0x80 - b'A' sets its top bit when it is at least `A`,
    // adding 0x80 - b'Z' - 1 when it is past `Z`; no sum carries into the next.
    let low = word & !HIGH;
    let from_a = low + ONES * u64::from(0x80 - b'A');
    let past_z = low + ONES * u64::from(0x80 - b'Z' - 1);
    from_a & !past_z & !word & HIGH != 0
}

/// The first value appended to `name` in `ops`.
fn appended<'o>(mut ops: impl Iterator<Item = Change<'o>>, name: &str) -> Option<&'o [u8]> {
    ops.find_map(|op| {
        (op.kind == Kind::Append && op.name.eq_ignore_ascii_case(name.as_bytes()))
            .then_some(op.value)
    })
}

fn apply(list: &mut Vec<(String, Vec<u8>)>, op: Change<'_>) {
    match op.kind {
        Kind::Set => {
            list.retain(|(n, _)| n.as_bytes() != op.name);
            list.push((op.name_text(), op.value.to_vec()));
        }
        Kind::Append => list.push((op.name_text(), op.value.to_vec())),
        Kind::Remove => list.retain(|(n, _)| n.as_bytes() != op.name),
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
            .push((lower_case(name), value.as_ref().to_vec()));
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

/// Where `on_response_body` reads the response's trailers from: weir on wasm32, the mock
/// host natively.
mod trailers {
    #[cfg(target_arch = "wasm32")]
    pub(super) fn read() -> Vec<(String, Vec<u8>)> {
        crate::bindings::weir::plugin::types::response_trailers()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn read() -> Vec<(String, Vec<u8>)> {
        crate::mock::with(|host| host.trailers.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check agrees with a byte-at-a-time one for every byte at every
    /// place of a word and in the tail, among bytes on either side of the letters' range
    /// (`@`, `[`) and past ASCII, and names come out as `to_ascii_lowercase` makes them.
    #[test]
    fn upper_case_is_found_at_any_place_of_any_byte() {
        for background in [b'a', b'@', b'[', 0x80, 0xc1] {
            for len in 0..=20 {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut bytes = vec![background; len];
                        bytes[at] = byte;
                        assert_eq!(
                            has_upper_case(&bytes),
                            byte.is_ascii_uppercase(),
                            "byte {byte:#x} at {at} of {len} among {background:#x}"
                        );
                    }
                }
            }
        }
        for name in [
            "x-ratelimit-limit",
            "X-RateLimit-Limit",
            "Host",
            "ÄÖ-Header",
            "",
            "A",
        ] {
            assert_eq!(lower_case(name), name.to_ascii_lowercase());
        }
    }

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<'static> {
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
        let (headers, path, _) = r.take_answer();
        let expected = vec![
            HeaderOp::Set(("a".into(), b"one".to_vec())),
            HeaderOp::Append(("b".into(), b"3".to_vec())),
            HeaderOp::Remove("c".into()),
        ];
        assert_eq!(
            format!("{:?}", headers.to_header_ops()),
            format!("{expected:?}")
        );
        assert_eq!(path, None, "the target is sent only if changed");
    }

    /// Headers as weir holds them, counting how often they are asked for.
    #[derive(Debug, Default)]
    struct Fake {
        list: Vec<(String, Vec<u8>)>,
        single: std::cell::Cell<usize>,
        every: std::cell::Cell<usize>,
    }

    impl HeaderSource for Fake {
        fn first(&self, name: &str) -> Option<Vec<u8>> {
            self.single.set(self.single.get() + 1);
            header(&self.list, name).map(<[u8]>::to_vec)
        }

        fn every(&self) -> Vec<(String, Vec<u8>)> {
            self.every.set(self.every.get() + 1);
            self.list.clone()
        }
    }

    fn fake(headers: &[(&str, &str)]) -> Fake {
        Fake {
            list: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            ..Fake::default()
        }
    }

    #[test]
    fn headers_read_on_demand_ask_once_per_name_and_only_for_what_is_read() {
        let host = fake(&[("a", "1"), ("b", "2"), ("b", "3")]);
        let headers = Headers::lazy(&host);
        assert_eq!(headers.first("B"), Some(&b"2"[..]));
        assert_eq!(headers.first("b"), Some(&b"2"[..]));
        assert_eq!(headers.first("missing"), None);
        assert_eq!(headers.first("missing"), None);
        assert_eq!((host.single.get(), host.every.get()), (2, 0));

        // Past the remembered names, everything is read once and answers the rest.
        for i in 0..REMEMBERED_HEADERS {
            let _ = headers.first(&format!("x-{i}"));
        }
        assert_eq!(headers.first("a"), Some(&b"1"[..]));
        assert_eq!(headers.first("c"), None);
        assert_eq!(host.every.get(), 1);
        assert_eq!(host.single.get(), REMEMBERED_HEADERS);
    }

    #[test]
    fn changes_overlay_headers_read_on_demand_as_they_do_a_whole_list() {
        let original = [("a", "1"), ("b", "2"), ("c", "3"), ("c", "4")];
        let changes: [(Kind, &str, &[u8]); 6] = [
            (Kind::Set, "a", b"one"),
            (Kind::Remove, "b", b""),
            (Kind::Append, "b", b"two"),
            (Kind::Append, "C", b"5"),
            (Kind::Append, "d", b"new"),
            (Kind::Remove, "e", b""),
        ];
        // After each change, every name reads the same through both, and the whole lists
        // agree at the end.
        let host = fake(&original);
        let mut lazy = Headers::lazy(&host);
        let mut whole = Headers::whole(fake(&original).list);
        for (kind, name, value) in changes {
            lazy.change(kind, name, value);
            whole.change(kind, name, value);
            for name in ["a", "b", "c", "d", "e", "A"] {
                assert_eq!(lazy.first(name), whole.first(name), "{name}");
            }
        }
        assert_eq!(host.every.get(), 0, "single reads never fetch every header");
        assert_eq!(lazy.all(), whole.all());
        assert_eq!(
            format!("{:?}", lazy.ops.to_header_ops()),
            format!("{:?}", whole.ops.to_header_ops())
        );
    }

    #[test]
    fn changes_named_in_any_case_overlay_headers_as_they_do_a_whole_list() {
        // Names longer than a word, changed and read in other cases than weir's lower case,
        // and every header read in the middle (the overlay becomes the whole list).
        let original = [("x-forwarded-for", "1"), ("x-request-tag", "2")];
        let changes: [(Kind, &str, &[u8]); 6] = [
            (Kind::Set, "X-Forwarded-For", b"one"),
            (Kind::Remove, "X-REQUEST-TAG", b""),
            (Kind::Append, "x-Request-Tag", b"two"),
            (Kind::Append, "X-New-Header-Name", b"3"),
            (Kind::Set, "X-NEW-HEADER-NAME", b"4"),
            (Kind::Append, "X-new-header-name", b"5"),
        ];
        let names = [
            "x-forwarded-for",
            "X-REQUEST-TAG",
            "x-new-header-name",
            "X-Nope",
        ];
        let host = fake(&original);
        let mut lazy = Headers::lazy(&host);
        let mut whole = Headers::whole(fake(&original).list);
        for (i, (kind, name, value)) in changes.into_iter().enumerate() {
            lazy.change(kind, name, value);
            whole.change(kind, name, value);
            if i == 3 {
                assert_eq!(lazy.all(), whole.all());
            }
            for name in names {
                assert_eq!(lazy.first(name), whole.first(name), "{name} after {i}");
            }
        }
        assert_eq!(whole.first("x-new-header-name"), Some(&b"4"[..]));
        assert_eq!(whole.first("x-request-tag"), Some(&b"two"[..]));
        let all: Vec<(&str, &[u8])> = whole
            .all()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            all,
            [
                ("x-forwarded-for", &b"one"[..]),
                ("x-request-tag", b"two"),
                ("x-new-header-name", b"4"),
                ("x-new-header-name", b"5"),
            ]
        );
        assert_eq!(
            format!("{:?}", lazy.ops.to_header_ops()),
            format!("{:?}", whole.ops.to_header_ops())
        );
        let sent: Vec<String> = whole.ops.iter().map(|c| c.name_text()).collect();
        assert!(
            sent.iter().all(|n| *n == n.to_ascii_lowercase()),
            "{sent:?}"
        );
    }

    #[test]
    fn path_and_query_changes_make_one_target() {
        let mut r = request("/old?x=1", &[]);
        r.set_path("/new");
        assert_eq!(r.clone().take_answer().1.as_deref(), Some("/new?x=1"));
        r.set_query(None);
        assert_eq!(r.take_answer().1.as_deref(), Some("/new"));
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
