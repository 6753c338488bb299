//! Implementation of the `weir:plugin/types` resources (since 0.3.0): the `request` and
//! `response` a lazy hook reads on demand. For one call the chain's heads are moved into
//! the instance's resource table, answered from there and moved back, never copied whole.

use wasmtime::component::Resource;

use crate::plugin::bindings::types::{
    Header, Host, HostRequest, HostResponse, RequestHead, ResponseHead,
};
use crate::plugin::state::PluginState;

/// The request a lazy hook reads: the chain's head, lent for the call. (`pub` because the
/// generated bindings re-export it; the module keeps it inside the crate.)
#[derive(Debug)]
#[allow(unreachable_pub, reason = "re-exported by bindgen's generated module")]
pub struct RequestView(pub(crate) RequestHead);

/// The response a lazy hook reads: the chain's head, lent for the call.
#[derive(Debug)]
#[allow(unreachable_pub, reason = "re-exported by bindgen's generated module")]
pub struct ResponseView(pub(crate) ResponseHead);

impl Host for PluginState {}

/// An empty request head: what the chain holds while its head is lent (allocates nothing).
pub(crate) fn no_request() -> RequestHead {
    RequestHead {
        method: String::new(),
        path: String::new(),
        query: None,
        authority: None,
        headers: Vec::new(),
        client_address: String::new(),
        route: String::new(),
        request_id: String::new(),
    }
}

/// An empty response head, as [`no_request`].
pub(crate) fn no_response() -> ResponseHead {
    ResponseHead {
        status: 0,
        headers: Vec::new(),
    }
}

/// The first value of `name` (any case) in `headers`.
fn first(headers: &[Header], name: &str) -> Option<Vec<u8>> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Every value of `name` (any case) in `headers`, in order.
fn all(headers: &[Header], name: &str) -> Vec<Vec<u8>> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

impl PluginState {
    fn request(&self, handle: &Resource<RequestView>) -> wasmtime::Result<&RequestHead> {
        Ok(&self.table.get(handle)?.0)
    }

    fn response(&self, handle: &Resource<ResponseView>) -> wasmtime::Result<&ResponseHead> {
        Ok(&self.table.get(handle)?.0)
    }
}

impl HostRequest for PluginState {
    fn method(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.method.clone())
    }

    fn path(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.path.clone())
    }

    fn query(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&this)?.query.clone())
    }

    fn authority(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Option<String>> {
        Ok(self.request(&this)?.authority.clone())
    }

    fn header(
        &mut self,
        this: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first(&self.request(&this)?.headers, &name))
    }

    fn header_all(
        &mut self,
        this: Resource<RequestView>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(all(&self.request(&this)?.headers, &name))
    }

    fn headers(&mut self, this: Resource<RequestView>) -> wasmtime::Result<Vec<Header>> {
        Ok(self.request(&this)?.headers.clone())
    }

    fn client_address(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.client_address.clone())
    }

    fn route(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.route.clone())
    }

    fn request_id(&mut self, this: Resource<RequestView>) -> wasmtime::Result<String> {
        Ok(self.request(&this)?.request_id.clone())
    }

    fn drop(&mut self, this: Resource<RequestView>) -> wasmtime::Result<()> {
        // The host lends handles and takes them back itself; a guest never owns one.
        self.table.delete(this)?;
        Ok(())
    }
}

impl HostResponse for PluginState {
    fn status(&mut self, this: Resource<ResponseView>) -> wasmtime::Result<u16> {
        Ok(self.response(&this)?.status)
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
        Ok(self.response(&this)?.headers.clone())
    }

    fn drop(&mut self, this: Resource<ResponseView>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
