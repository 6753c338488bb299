//! Implementation of the `weir:plugin/types` resources (since 0.3.0): the `request` and
//! `response` a lazy hook reads on demand. For one call the chain's views (hyper's heads,
//! `plugin::view`) are moved into the instance's resource table, answered from there and
//! moved back, never copied whole. Since 0.3.1 a hook may also leave response header
//! changes on its `request` (kept in the view for the chain's response phase); since 0.3.2
//! it may read the client connection's TLS; since 0.3.5 set or extend the request's cache
//! key (kept in the request's extensions for the route's cache); since 0.3.6 set the
//! request's method and body (staged in the view, applied when the call returns), and a
//! response body hook may read the response's trailers (`response-trailers`).

use http::HeaderMap;
use wasmtime::component::Resource;

use crate::plugin::contract::current::types::{
    Header, HeaderOp, Host, HostRequest, HostResponse, TlsInfo,
};
use crate::plugin::state::PluginState;
use crate::plugin::view::{RequestView, ResponseView, header_list};

impl Host for PluginState {
    fn response_trailers(&mut self) -> wasmtime::Result<Vec<Header>> {
        Ok(self
            .trailers
            .as_deref()
            .map(header_list)
            .unwrap_or_default())
    }
}

/// The first value of `name` (any case), if present.
fn first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

/// Every value of `name` (any case), in order.
fn all(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

impl PluginState {
    fn request(&self, handle: &Resource<RequestView>) -> wasmtime::Result<&RequestView> {
        Ok(self.table.get(handle)?)
    }

    fn response(&self, handle: &Resource<ResponseView>) -> wasmtime::Result<&ResponseView> {
        Ok(self.table.get(handle)?)
    }
}

impl HostRequest for PluginState {
    fn method(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.parts.method.as_str().to_owned())
    }

    fn path(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.parts.uri.path().to_owned())
    }

    fn query(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&this)?.parts.uri.query().map(str::to_owned))
    }

    fn authority(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&this)?.authority().map(str::to_owned))
    }

    fn header(
        &mut self,
        this: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first(&self.request(&this)?.parts.headers, &name))
    }

    fn header_all(
        &mut self,
        this: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(all(&self.request(&this)?.parts.headers, &name))
    }

    fn headers(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Vec<Header>> {
        Ok(header_list(&self.request(&this)?.parts.headers))
    }

    fn client_address(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.client().to_owned())
    }

    fn route(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.route().to_owned())
    }

    fn request_id(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.request_id().to_owned())
    }

    fn tls(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Option<TlsInfo>> {
        Ok(self.request(&this)?.tls().map(|tls| TlsInfo {
            version: tls.version.to_owned(),
            server_name: tls.server_name.clone(),
            client_subject: tls.client_subject.clone(),
        }))
    }

    fn add_response_header_ops(
        &mut self,
        this: Resource<RequestView>,
        ops: Vec<HeaderOp>,
    ) -> wasmtime::Result<()> {
        let room = self.hostcall_fuel;
        self.table
            .get_mut(&this)?
            .leave(ops, room)
            .map_err(|why| wasmtime::Error::msg(format!("add-response-header-ops: {why}")))
    }

    fn set_cache_key(&mut self, this: Resource<RequestView>, key: String) -> wasmtime::Result<()> {
        self.table
            .get_mut(&this)?
            .set_cache_key(key)
            .map_err(|why| wasmtime::Error::msg(format!("set-cache-key: {why}")))
    }

    fn add_cache_key(&mut self, this: Resource<RequestView>, part: String) -> wasmtime::Result<()> {
        self.table
            .get_mut(&this)?
            .add_cache_key(part)
            .map_err(|why| wasmtime::Error::msg(format!("add-cache-key: {why}")))
    }

    fn set_method(&mut self, this: Resource<RequestView>, method: String) -> wasmtime::Result<()> {
        self.table
            .get_mut(&this)?
            .set_method(&method)
            .map_err(|why| wasmtime::Error::msg(format!("set-method: {why}")))
    }

    fn set_body(&mut self, this: Resource<RequestView>, body: Vec<u8>) -> wasmtime::Result<()> {
        self.table
            .get_mut(&this)?
            .set_body(body)
            .map_err(|why| wasmtime::Error::msg(format!("set-body: {why}")))
    }

    fn drop(&mut self, this: Resource<RequestView>) -> wasmtime::Result<()> {
        // The host lends handles and takes them back itself; a guest never owns one.
        self.table.delete(this)?;
        Ok(())
    }
}

impl HostResponse for PluginState {
    fn status(&mut self, this: Resource<ResponseView>) -> wasmtime::Result<u16> {
        Ok(self.response(&this)?.status.as_u16())
    }

    fn header(
        &mut self,
        this: Resource<ResponseView>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first(&self.response(&this)?.headers, &name))
    }

    fn header_all(
        &mut self,
        this: Resource<ResponseView>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(all(&self.response(&this)?.headers, &name))
    }

    fn headers(&mut self, this: Resource<ResponseView>) -> wasmtime::Result<Vec<Header>> {
        Ok(header_list(&self.response(&this)?.headers))
    }

    fn drop(&mut self, this: Resource<ResponseView>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_by_name_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.append("x-tag", "one".parse().expect("value"));
        headers.append("x-tag", "two".parse().expect("value"));
        assert_eq!(first(&headers, "X-Tag"), Some(b"one".to_vec()));
        assert_eq!(all(&headers, "X-TAG"), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(first(&headers, "x-missing"), None);
        // A name that is not a valid header name is simply absent.
        assert_eq!(first(&headers, "bad name"), None);
        assert!(all(&headers, "bad name").is_empty());
    }
}
