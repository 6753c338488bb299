// Package export_weir_plugin_http_filter is {{name}}, a weir filter. It answers
// GET /{{name}}/ping itself, tags every request it passes on with `x-hello`, and every
// response with `x-plugin`. The bindings (`weir plugin bindgen --lang go .`, which
// build.sh runs) call the exported functions below.
//
// weir calls the lazy hooks (OnRequestLazy, OnResponseLazy): they get handles to the request
// and response and read only what they ask for, one call into weir each; a handle must be
// dropped before the hook returns. The record forms (OnRequest, OnResponse, given whole
// heads) must be exported too; here both forms share the answer.
package export_weir_plugin_http_filter

import (
	"encoding/json"
	"runtime"
	"runtime/debug"

	log "wit_component/weir_plugin_log"
	types "wit_component/weir_plugin_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

const name = "{{name}}"

var calls int

func init() {
	// weir reuses an instance for many calls. Go's collector must not run in the middle of
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

// Configure receives the [config] table of {{name}}.toml, as JSON; an Err rejects it.
func Configure(text string) witTypes.Result[witTypes.Unit, string] {
	var table map[string]any
	if err := json.Unmarshal([]byte(text), &table); err != nil {
		return witTypes.Err[witTypes.Unit, string]("expected a table: " + err.Error())
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func Hooks() types.HookSet {
	return types.HookSetOnRequest | types.HookSetOnResponse
}

func BodyHooks() types.BodyHookSet {
	return 0
}

func header(name, value string) witTypes.Tuple2[string, []uint8] {
	return witTypes.Tuple2[string, []uint8]{F0: name, F1: []byte(value)}
}

// answer is the answer to a request: ping says whether it is GET /{{name}}/ping.
func answer(ping bool) types.RequestAction {
	if ping {
		log.Log(log.LevelDebug, "ping")
		return types.MakeRequestActionRespond(types.LocalResponse{
			Status:  200,
			Headers: []witTypes.Tuple2[string, []uint8]{header("content-type", "text/plain")},
			Body:    []byte("pong"),
		})
	}
	return types.MakeRequestActionContinue(types.RequestChanges{
		Headers: []types.HeaderOp{types.MakeHeaderOpSet(header("x-hello", name))},
		Path:    witTypes.None[string](),
	})
}

func tagged() types.ResponseAction {
	return types.MakeResponseActionContinue([]types.HeaderOp{types.MakeHeaderOpSet(header("x-plugin", name))})
}

// OnRequestLazy is what weir calls. The path is read only for a GET.
func OnRequestLazy(request *types.Request) types.RequestAction {
	defer collect()
	defer request.Drop()
	return answer(request.Method() == "GET" && request.Path() == "/"+name+"/ping")
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
	return answer(request.Method == "GET" && request.Path == "/"+name+"/ping")
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
