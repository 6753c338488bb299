// guard: refuses clients from listed networks unless they show the bypass token, and tags
// every response. The same filter exists in every language under examples/filters/.
//
// weir (weir:plugin@0.3.x) calls the lazy hooks, `on_request_lazy` and `on_response_lazy`:
// they get handles and read only what the decision needs, the client's address and, for a
// listed client, the token header. The record forms (`on_request`, `on_response`, given
// whole heads) must be exported too and share the decision.
//
// Strings and lists the host passes in, or a handle's method returns, belong to the filter,
// which frees them; a handle passed to a hook must be dropped before the hook returns. What
// a hook returns is allocated with malloc and freed by the generated code once the host has
// it.

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings/filter.h"

#define MAX_NETWORKS 64

typedef struct {
  int family;            // AF_INET or AF_INET6
  unsigned char addr[16];
  int prefix;            // bits that must match
} network_t;

static struct {
  network_t deny[MAX_NETWORKS];
  int deny_count;
  char *token;
  char *token_header;
  filter_string_t token_header_name;  // token_header, as the handle's `header` takes it
  char *tag;
} guard;

// --- configuration: the [config] table as JSON ------------------------------------------

// A small reader for the one shape the config has: an object whose values are strings or
// lists of strings. Anything else is an error with a message.
typedef struct {
  const char *at, *end;
  char error[160];
} reader_t;

static void skip_space(reader_t *r) {
  while (r->at < r->end && strchr(" \t\r\n", *r->at)) r->at++;
}

static int expect(reader_t *r, char c) {
  skip_space(r);
  if (r->at < r->end && *r->at == c) {
    r->at++;
    return 1;
  }
  return 0;
}

// Reads a JSON string into a new NUL-terminated buffer (escapes: \" \\ \/ only).
static char *read_string(reader_t *r) {
  if (!expect(r, '"')) return NULL;
  char *out = malloc(r->end - r->at + 1);
  size_t n = 0;
  while (r->at < r->end && *r->at != '"') {
    if (*r->at == '\\' && r->at + 1 < r->end && strchr("\"\\/", r->at[1])) r->at++;
    out[n++] = *r->at++;
  }
  if (r->at == r->end) {
    free(out);
    return NULL;
  }
  r->at++;
  out[n] = 0;
  return out;
}

static int parse_network(const char *text, network_t *net) {
  char addr[64];
  const char *slash = strchr(text, '/');
  size_t len = slash ? (size_t)(slash - text) : strlen(text);
  if (len >= sizeof addr) return 0;
  memcpy(addr, text, len);
  addr[len] = 0;
  int max;
  if (inet_pton(AF_INET, addr, net->addr) == 1) {
    net->family = AF_INET;
    max = 32;
  } else if (inet_pton(AF_INET6, addr, net->addr) == 1) {
    net->family = AF_INET6;
    max = 128;
  } else {
    return 0;
  }
  net->prefix = max;
  if (slash) {
    char *stop;
    long prefix = strtol(slash + 1, &stop, 10);
    if (*stop || stop == slash + 1 || prefix < 0 || prefix > max) return 0;
    net->prefix = (int)prefix;
  }
  return 1;
}

static int read_deny(reader_t *r) {
  if (!expect(r, '[')) {
    snprintf(r->error, sizeof r->error, "deny: expected a list of networks");
    return 0;
  }
  if (expect(r, ']')) return 1;
  do {
    char *text = read_string(r);
    int index = guard.deny_count;
    if (!text || index == MAX_NETWORKS || !parse_network(text, &guard.deny[index])) {
      snprintf(r->error, sizeof r->error, "deny[%d]: \"%s\" is not a network (address/prefix)",
               index, text ? text : "");
      free(text);
      return 0;
    }
    free(text);
    guard.deny_count++;
  } while (expect(r, ','));
  if (!expect(r, ']')) {
    snprintf(r->error, sizeof r->error, "deny: expected a list of networks");
    return 0;
  }
  return 1;
}

static int read_config(reader_t *r) {
  if (!expect(r, '{')) {
    snprintf(r->error, sizeof r->error, "expected a table");
    return 0;
  }
  if (expect(r, '}')) return 1;
  do {
    char *key = read_string(r);
    if (!key || !expect(r, ':')) {
      snprintf(r->error, sizeof r->error, "the config is not valid JSON");
      free(key);
      return 0;
    }
    int ok = 1;
    char **target = !strcmp(key, "token")          ? &guard.token
                    : !strcmp(key, "token_header") ? &guard.token_header
                    : !strcmp(key, "tag")          ? &guard.tag
                                                   : NULL;
    if (!strcmp(key, "deny")) {
      ok = read_deny(r);
    } else if (target) {
      free(*target);
      *target = read_string(r);
      if (!*target) {
        snprintf(r->error, sizeof r->error, "%s: expected a string", key);
        ok = 0;
      }
    } else {
      snprintf(r->error, sizeof r->error, "unknown key \"%s\"", key);
      ok = 0;
    }
    free(key);
    if (!ok) return 0;
  } while (expect(r, ','));
  if (!expect(r, '}')) {
    snprintf(r->error, sizeof r->error, "the config is not valid JSON");
    return 0;
  }
  return 1;
}

bool exports_weir_plugin_http_filter_configure(filter_string_t *config, filter_string_t *err) {
  guard.deny_count = 0;
  reader_t r = {(const char *)config->ptr, (const char *)config->ptr + config->len, ""};
  int ok = read_config(&r);
  filter_string_free(config);
  if (ok && (!guard.token || !*guard.token)) {
    snprintf(r.error, sizeof r.error, "token: required, a non-empty string");
    ok = 0;
  }
  if (!ok) {
    filter_string_dup(err, r.error);
    return false;
  }
  if (!guard.token_header) guard.token_header = strdup("x-guard-token");
  for (char *c = guard.token_header; *c; c++) *c = (char)tolower((unsigned char)*c);
  filter_string_set(&guard.token_header_name, guard.token_header);
  if (!guard.tag) guard.tag = strdup("c");
  return true;
}

// --- hooks --------------------------------------------------------------------------------

exports_weir_plugin_http_filter_hook_set_t exports_weir_plugin_http_filter_hooks(void) {
  return WEIR_PLUGIN_TYPES_HOOK_SET_ON_REQUEST | WEIR_PLUGIN_TYPES_HOOK_SET_ON_RESPONSE;
}

exports_weir_plugin_http_filter_body_hook_set_t exports_weir_plugin_http_filter_body_hooks(void) {
  return 0;
}

static int in_network(const network_t *net, int family, const unsigned char *addr) {
  if (net->family != family) return 0;
  int full = net->prefix / 8, rest = net->prefix % 8;
  if (memcmp(net->addr, addr, full)) return 0;
  if (!rest) return 1;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (net->addr[full] & mask) == (addr[full] & mask);
}

// Whether the client (`ip:port` or `[ip]:port`) is in a denied network. An address that
// cannot be read is not trusted.
static int denied(const filter_string_t *client) {
  char host[64];
  const char *start = (const char *)client->ptr, *colon = NULL;
  for (size_t i = 0; i < client->len; i++)
    if (start[i] == ':') colon = start + i;
  size_t len = colon ? (size_t)(colon - start) : client->len;
  if (len && start[0] == '[') start++, len -= 2;
  if (len >= sizeof host) return 1;
  memcpy(host, start, len);
  host[len] = 0;
  unsigned char addr[16];
  int family = inet_pton(AF_INET, host, addr) == 1    ? AF_INET
               : inet_pton(AF_INET6, host, addr) == 1 ? AF_INET6
                                                      : 0;
  if (!family) return 1;
  for (int i = 0; i < guard.deny_count; i++)
    if (in_network(&guard.deny[i], family, addr)) return 1;
  return 0;
}

// Compares without stopping at the first difference, so timing says nothing.
static int token_ok(const uint8_t *sent, size_t len) {
  size_t want = strlen(guard.token);
  if (len != want) return 0;
  unsigned char diff = 0;
  for (size_t j = 0; j < want; j++) diff |= sent[j] ^ (unsigned char)guard.token[j];
  return diff == 0;
}

// The token in a whole head: the first header of that name.
static int token_ok_in(const weir_plugin_types_list_header_t *headers) {
  for (size_t i = 0; i < headers->len; i++) {
    const weir_plugin_types_header_t *h = &headers->ptr[i];
    if (h->f0.len == guard.token_header_name.len &&
        !memcmp(h->f0.ptr, guard.token_header_name.ptr, h->f0.len))
      return token_ok(h->f1.ptr, h->f1.len);
  }
  return 0;
}

static void set_bytes(filter_list_u8_t *list, const char *text) {
  list->len = strlen(text);
  list->ptr = malloc(list->len);
  memcpy(list->ptr, text, list->len);
}

// The answer, once the filter knows whether the request may pass: a 403 for a refused
// client, else the request goes on without the token.
static void answer(int pass, const filter_string_t *client,
                   exports_weir_plugin_http_filter_request_action_t *ret) {
  if (!pass) {
    char message[96];
    snprintf(message, sizeof message, "refused %.*s", (int)client->len, (const char *)client->ptr);
    filter_string_t line;
    filter_string_set(&line, message);
    weir_plugin_log_log(WEIR_PLUGIN_LOG_LEVEL_INFO, &line);

    ret->tag = WEIR_PLUGIN_TYPES_REQUEST_ACTION_RESPOND;
    weir_plugin_types_local_response_t *local = &ret->val.respond;
    local->status = 403;
    local->headers.len = 1;
    local->headers.ptr = malloc(sizeof(weir_plugin_types_header_t));
    filter_string_dup(&local->headers.ptr[0].f0, "content-type");
    set_bytes(&local->headers.ptr[0].f1, "application/json");
    set_bytes(&local->body, "{\"error\":\"client network not allowed\"}");
  } else {
    // The token never travels upstream.
    ret->tag = WEIR_PLUGIN_TYPES_REQUEST_ACTION_CONTINUE;
    weir_plugin_types_request_changes_t *changes = &ret->val.continue_;
    changes->path.is_some = false;
    changes->headers.len = 1;
    changes->headers.ptr = malloc(sizeof(weir_plugin_types_header_op_t));
    changes->headers.ptr[0].tag = WEIR_PLUGIN_TYPES_HEADER_OP_REMOVE;
    filter_string_dup(&changes->headers.ptr[0].val.remove, guard.token_header);
  }
}

static void tag_response(exports_weir_plugin_http_filter_response_action_t *ret) {
  ret->tag = WEIR_PLUGIN_TYPES_RESPONSE_ACTION_CONTINUE;
  ret->val.continue_.len = 1;
  ret->val.continue_.ptr = malloc(sizeof(weir_plugin_types_header_op_t));
  weir_plugin_types_header_op_t *op = &ret->val.continue_.ptr[0];
  op->tag = WEIR_PLUGIN_TYPES_HEADER_OP_SET;
  filter_string_dup(&op->val.set.f0, "x-guard");
  set_bytes(&op->val.set.f1, guard.tag);
}

// What weir calls: the client's address, then the token header only for a listed client.
void exports_weir_plugin_http_filter_on_request_lazy(exports_weir_plugin_http_filter_borrow_request_t request,
                                                     exports_weir_plugin_http_filter_request_action_t *ret) {
  filter_string_t client;
  weir_plugin_types_method_request_client_address(request, &client);
  int pass = !denied(&client);
  filter_list_u8_t sent;
  if (!pass && weir_plugin_types_method_request_header(request, &guard.token_header_name, &sent)) {
    pass = token_ok(sent.ptr, sent.len);
    filter_list_u8_free(&sent);
  }
  answer(pass, &client, ret);
  filter_string_free(&client);
  weir_plugin_types_request_drop_borrow(request);
}

void exports_weir_plugin_http_filter_on_response_lazy(exports_weir_plugin_http_filter_borrow_request_t request,
                                                      exports_weir_plugin_http_filter_borrow_response_t response,
                                                      exports_weir_plugin_http_filter_response_action_t *ret) {
  tag_response(ret);
  weir_plugin_types_request_drop_borrow(request);
  weir_plugin_types_response_drop_borrow(response);
}

// The same hooks, given whole heads.
void exports_weir_plugin_http_filter_on_request(exports_weir_plugin_http_filter_request_head_t *request,
                                                exports_weir_plugin_http_filter_request_action_t *ret) {
  int pass = !denied(&request->client_address) || token_ok_in(&request->headers);
  answer(pass, &request->client_address, ret);
  exports_weir_plugin_http_filter_request_head_free(request);
}

void exports_weir_plugin_http_filter_on_response(exports_weir_plugin_http_filter_request_head_t *request,
                                                 exports_weir_plugin_http_filter_response_head_t *response,
                                                 exports_weir_plugin_http_filter_response_action_t *ret) {
  tag_response(ret);
  exports_weir_plugin_http_filter_request_head_free(request);
  exports_weir_plugin_http_filter_response_head_free(response);
}

// Body hooks are not declared in body_hooks(), so weir never calls these.
void exports_weir_plugin_http_filter_on_request_body(exports_weir_plugin_http_filter_request_head_t *request,
                                                     filter_list_u8_t *body,
                                                     exports_weir_plugin_http_filter_body_action_t *ret) {
  abort();
}

void exports_weir_plugin_http_filter_on_response_body(exports_weir_plugin_http_filter_request_head_t *request,
                                                      exports_weir_plugin_http_filter_response_head_t *response,
                                                      filter_list_u8_t *body,
                                                      exports_weir_plugin_http_filter_body_action_t *ret) {
  abort();
}
