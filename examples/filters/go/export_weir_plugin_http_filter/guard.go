// Package export_weir_plugin_http_filter is guard: it refuses clients from listed networks
// unless they show the bypass token, and tags every response. The same filter exists in
// every language under examples/filters/. The generated bindings (`weir plugin bindgen
// --lang go`) call the exported functions below.
//
// weir (weir:plugin@0.3.x) calls the lazy hooks, OnRequestLazy and OnResponseLazy: they get
// handles and read only what the decision needs, the client's address and, for a listed
// client, the token header. A handle must be dropped before the hook returns. The record
// forms (OnRequest, OnResponse, given whole heads) must be exported too and share the
// decision.
package export_weir_plugin_http_filter

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"

	log "wit_component/weir_plugin_log"
	types "wit_component/weir_plugin_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type config struct {
	Deny        []string `json:"deny"`
	Token       string   `json:"token"`
	TokenHeader string   `json:"token_header"`
	Tag         string   `json:"tag"`
}

var (
	deny        []netip.Prefix
	token       []byte
	tokenHeader string
	tag         []byte
	calls       int
)

func init() {
	// weir reuses an instance for many calls. Go's collector may not run in the middle of
	// one (it would re-enter the component), so it is switched off and run between calls.
	debug.SetGCPercent(-1)
}

// collect ends every hook. It releases the buffers weir wrote this call's answers into
// (`request.ClientAddress()`, `request.Header(…)`): the bindings pin each one in a global
// runtime.Pinner, which only the record hooks, whose arguments weir writes, release on
// entry. weir calls the lazy hooks, so without this every answer stays pinned for the
// instance's life: its heap grows, and each collection takes longer. The Go values read
// from them (strings, slices) keep what they still need alive. Every 100 calls it also
// runs the collector.
func collect() {
	witRuntime.Unpin()
	calls++
	if calls%100 == 0 {
		runtime.GC()
	}
}

func Configure(text string) witTypes.Result[witTypes.Unit, string] {
	fail := func(format string, args ...any) witTypes.Result[witTypes.Unit, string] {
		return witTypes.Err[witTypes.Unit, string](fmt.Sprintf(format, args...))
	}
	c := config{TokenHeader: "x-guard-token", Tag: "go"}
	if err := json.Unmarshal([]byte(text), &c); err != nil {
		return fail("the config does not fit: %v", err)
	}
	deny = deny[:0]
	for i, network := range c.Deny {
		prefix, err := netip.ParsePrefix(network)
		if err != nil {
			addr, addrErr := netip.ParseAddr(network)
			if addrErr != nil {
				return fail("deny[%d]: %q is not a network (address/prefix)", i, network)
			}
			prefix = netip.PrefixFrom(addr, addr.BitLen())
		}
		deny = append(deny, prefix.Masked())
	}
	if c.Token == "" {
		return fail("token: required, a non-empty string")
	}
	token, tokenHeader, tag = []byte(c.Token), strings.ToLower(c.TokenHeader), []byte(c.Tag)
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func Hooks() types.HookSet {
	return types.HookSetOnRequest | types.HookSetOnResponse
}

func BodyHooks() types.BodyHookSet {
	return 0
}

// denied says whether the client is in a denied network; an address that cannot be read
// is not trusted.
func denied(client string) bool {
	addr, err := netip.ParseAddrPort(client)
	if err != nil {
		return true
	}
	ip := addr.Addr().Unmap()
	for _, network := range deny {
		if network.Contains(ip) {
			return true
		}
	}
	return false
}

// decide is the answer to a request from client. sentToken gives the token header's first
// value, if any: it is asked for only when the client is listed.
func decide(client string, sentToken func() witTypes.Option[[]uint8]) types.RequestAction {
	if denied(client) {
		sent := sentToken()
		if sent.IsNone() || subtle.ConstantTimeCompare(sent.Some(), token) != 1 {
			log.Log(log.LevelInfo, "refused "+client)
			return types.MakeRequestActionRespond(types.LocalResponse{
				Status:  403,
				Headers: []witTypes.Tuple2[string, []uint8]{{F0: "content-type", F1: []byte("application/json")}},
				Body:    []byte(`{"error":"client network not allowed"}`),
			})
		}
	}
	// The token never travels upstream.
	return types.MakeRequestActionContinue(types.RequestChanges{
		Headers: []types.HeaderOp{types.MakeHeaderOpRemove(tokenHeader)},
		Path:    witTypes.None[string](),
	})
}

func tagged() types.ResponseAction {
	set := types.MakeHeaderOpSet(witTypes.Tuple2[string, []uint8]{F0: "x-guard", F1: tag})
	return types.MakeResponseActionContinue([]types.HeaderOp{set})
}

// OnRequestLazy is what weir calls: the client's address, then the token header only for a
// listed client.
func OnRequestLazy(request *types.Request) types.RequestAction {
	defer collect()
	defer request.Drop()
	return decide(request.ClientAddress(), func() witTypes.Option[[]uint8] {
		return request.Header(tokenHeader)
	})
}

func OnResponseLazy(request *types.Request, response *types.Response) types.ResponseAction {
	defer collect()
	defer request.Drop()
	defer response.Drop()
	return tagged()
}

// OnRequest and OnResponse are the same hooks, given whole heads.
func OnRequest(request types.RequestHead) types.RequestAction {
	defer collect()
	return decide(request.ClientAddress, func() witTypes.Option[[]uint8] {
		for _, h := range request.Headers {
			if h.F0 == tokenHeader {
				return witTypes.Some(h.F1)
			}
		}
		return witTypes.None[[]uint8]()
	})
}

func OnResponse(request types.RequestHead, response types.ResponseHead) types.ResponseAction {
	defer collect()
	return tagged()
}

// Body hooks are not declared in BodyHooks, so weir never calls these.
func OnRequestBody(request types.RequestHead, body []uint8) types.BodyAction {
	panic("not declared")
}

func OnResponseBody(request types.RequestHead, response types.ResponseHead, body []uint8) types.BodyAction {
	panic("not declared")
}
