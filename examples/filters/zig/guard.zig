//! guard: refuses clients from listed networks unless they show the bypass token, and tags
//! every response. The same filter exists in every language under examples/filters/.
//!
//! weir (weir:plugin@0.3.x) calls the lazy hooks, `on_request_lazy` and `on_response_lazy`:
//! they get handles and read only what the decision needs, the client's address and, for a
//! listed client, the token header. The record forms (`on_request`, `on_response`, given
//! whole heads) must be exported too and share the decision.
//!
//! The C bindings (`weir plugin bindgen --lang c`, translated by `zig translate-c`) do the
//! canonical ABI; this file implements the functions they call. What the host passes in, or
//! a handle's method returns, belongs to the filter, which frees it; a handle passed to a
//! hook must be dropped before the hook returns. What a hook returns is allocated with the C
//! allocator and freed by the bindings once the host has read it.

const std = @import("std");
const c = @import("bindings/filter.zig");
const net = std.Io.net;

const gpa = std.heap.c_allocator;

const Network = struct {
    bytes: [16]u8,
    len: usize, // 4 or 16
    prefix: u8,

    fn contains(self: Network, ip: net.IpAddress) bool {
        const addr: []const u8 = switch (ip) {
            .ip4 => |a| &a.bytes,
            .ip6 => |a| &a.bytes,
        };
        if (addr.len != self.len) return false;
        const full = self.prefix / 8;
        if (!std.mem.eql(u8, addr[0..full], self.bytes[0..full])) return false;
        const rest: u3 = @intCast(self.prefix % 8);
        if (rest == 0) return true;
        const mask: u8 = @as(u8, 0xff) << @intCast(8 - @as(u4, rest));
        return addr[full] & mask == self.bytes[full] & mask;
    }
};

const Config = struct {
    deny: []const []const u8 = &.{},
    token: []const u8 = "",
    token_header: []const u8 = "x-guard-token",
    tag: []const u8 = "zig",
};

var deny: std.ArrayList(Network) = .empty;
var config: ?std.json.Parsed(Config) = null;
var token_header: []u8 = &.{};

fn parseNetwork(text: []const u8) ?Network {
    var parts = std.mem.splitScalar(u8, text, '/');
    const addr = net.IpAddress.parse(parts.first(), 0) catch return null;
    var network: Network = .{ .bytes = @splat(0), .len = 16, .prefix = 128 };
    switch (addr) {
        .ip4 => |a| {
            @memcpy(network.bytes[0..4], &a.bytes);
            network.len = 4;
            network.prefix = 32;
        },
        .ip6 => |a| network.bytes = a.bytes,
    }
    if (parts.next()) |prefix| {
        const bits = std.fmt.parseInt(u8, prefix, 10) catch return null;
        if (bits > network.len * 8 or parts.next() != null) return null;
        network.prefix = bits;
    }
    return network;
}

fn slice(s: c.filter_string_t) []const u8 {
    return if (s.len == 0) "" else s.ptr[0..s.len];
}

fn reject(err: *c.filter_string_t, comptime format: []const u8, args: anytype) bool {
    const message = std.fmt.allocPrintSentinel(gpa, format, args, 0) catch return false;
    defer gpa.free(message);
    c.filter_string_dup(err, message.ptr);
    return false;
}

export fn exports_weir_plugin_http_filter_configure(text: *c.filter_string_t, err: *c.filter_string_t) bool {
    defer c.filter_string_free(text);
    if (config) |old| old.deinit();
    config = null;
    deny.clearRetainingCapacity();
    const parsed = std.json.parseFromSlice(Config, gpa, slice(text.*), .{ .allocate = .alloc_always }) catch |e|
        return reject(err, "the config does not fit: {s}", .{@errorName(e)});
    config = parsed;
    for (parsed.value.deny, 0..) |text_net, i| {
        const network = parseNetwork(text_net) orelse
            return reject(err, "deny[{d}]: \"{s}\" is not a network (address/prefix)", .{ i, text_net });
        deny.append(gpa, network) catch return reject(err, "out of memory", .{});
    }
    if (parsed.value.token.len == 0) return reject(err, "token: required, a non-empty string", .{});
    gpa.free(token_header);
    token_header = std.ascii.allocLowerString(gpa, parsed.value.token_header) catch
        return reject(err, "out of memory", .{});
    return true;
}

export fn exports_weir_plugin_http_filter_hooks() c.exports_weir_plugin_http_filter_hook_set_t {
    return c.WEIR_PLUGIN_TYPES_HOOK_SET_ON_REQUEST | c.WEIR_PLUGIN_TYPES_HOOK_SET_ON_RESPONSE;
}

export fn exports_weir_plugin_http_filter_body_hooks() c.exports_weir_plugin_http_filter_body_hook_set_t {
    return 0;
}

/// Whether the client is in a denied network; an address that cannot be read is not trusted.
fn denied(client: []const u8) bool {
    const ip = net.IpAddress.parseLiteral(client) catch return true;
    for (deny.items) |network| {
        if (network.contains(ip)) return true;
    }
    return false;
}

/// Compares without stopping at the first difference, so timing says nothing.
fn tokenOk(sent: []const u8) bool {
    const want = config.?.value.token;
    if (sent.len != want.len) return false;
    var diff: u8 = 0;
    for (sent, want) |a, b| diff |= a ^ b;
    return diff == 0;
}

/// The token in a whole head: the first header of that name.
fn tokenOkIn(headers: c.weir_plugin_types_list_header_t) bool {
    for (headers.ptr[0..headers.len]) |header| {
        if (std.mem.eql(u8, slice(header.f0), token_header)) return tokenOk(bytesOf(header.f1));
    }
    return false;
}

fn bytesOf(list: c.filter_list_u8_t) []const u8 {
    return if (list.len == 0) "" else list.ptr[0..list.len];
}

/// A copy of `text` the bindings free after the call.
fn bytes(text: []const u8) c.filter_list_u8_t {
    const copy = gpa.dupe(u8, text) catch @panic("out of memory");
    return .{ .ptr = copy.ptr, .len = copy.len };
}

fn string(text: []const u8) c.filter_string_t {
    const copy = gpa.dupe(u8, text) catch @panic("out of memory");
    return .{ .ptr = copy.ptr, .len = copy.len };
}

/// The answer, once the filter knows whether the request may pass: a 403 for a refused
/// client, else the request goes on without the token.
fn answer(pass: bool, client: []const u8, ret: *c.exports_weir_plugin_http_filter_request_action_t) void {
    if (!pass) {
        var buffer: [128]u8 = undefined;
        const line = std.fmt.bufPrint(&buffer, "refused {s}", .{client}) catch "refused";
        var message = c.filter_string_t{ .ptr = @constCast(line.ptr), .len = line.len };
        c.weir_plugin_log_log(c.WEIR_PLUGIN_LOG_LEVEL_INFO, &message);

        const headers = gpa.alloc(c.weir_plugin_types_header_t, 1) catch @panic("out of memory");
        headers[0] = .{ .f0 = string("content-type"), .f1 = bytes("application/json") };
        ret.tag = c.WEIR_PLUGIN_TYPES_REQUEST_ACTION_RESPOND;
        ret.val.respond = .{
            .status = 403,
            .headers = .{ .ptr = headers.ptr, .len = 1 },
            .body = bytes("{\"error\":\"client network not allowed\"}"),
        };
        return;
    }
    // The token never travels upstream.
    const ops = gpa.alloc(c.weir_plugin_types_header_op_t, 1) catch @panic("out of memory");
    ops[0] = .{ .tag = c.WEIR_PLUGIN_TYPES_HEADER_OP_REMOVE, .val = .{ .remove = string(token_header) } };
    ret.tag = c.WEIR_PLUGIN_TYPES_REQUEST_ACTION_CONTINUE;
    ret.val.continue_ = .{ .headers = .{ .ptr = ops.ptr, .len = 1 }, .path = .{ .is_some = false } };
}

fn tagResponse(ret: *c.exports_weir_plugin_http_filter_response_action_t) void {
    const ops = gpa.alloc(c.weir_plugin_types_header_op_t, 1) catch @panic("out of memory");
    const tag: c.weir_plugin_types_header_t = .{ .f0 = string("x-guard"), .f1 = bytes(config.?.value.tag) };
    ops[0] = .{ .tag = c.WEIR_PLUGIN_TYPES_HEADER_OP_SET, .val = .{ .set = tag } };
    ret.tag = c.WEIR_PLUGIN_TYPES_RESPONSE_ACTION_CONTINUE;
    ret.val.continue_ = .{ .ptr = ops.ptr, .len = 1 };
}

/// What weir calls: the client's address, then the token header only for a listed client.
export fn exports_weir_plugin_http_filter_on_request_lazy(
    request: c.exports_weir_plugin_http_filter_borrow_request_t,
    ret: *c.exports_weir_plugin_http_filter_request_action_t,
) void {
    defer c.weir_plugin_types_request_drop_borrow(request);
    var client: c.filter_string_t = undefined;
    c.weir_plugin_types_method_request_client_address(request, &client);
    defer c.filter_string_free(&client);
    var pass = !denied(slice(client));
    if (!pass) {
        var name = c.filter_string_t{ .ptr = token_header.ptr, .len = token_header.len };
        var sent: c.filter_list_u8_t = undefined;
        if (c.weir_plugin_types_method_request_header(request, &name, &sent)) {
            defer c.filter_list_u8_free(&sent);
            pass = tokenOk(bytesOf(sent));
        }
    }
    answer(pass, slice(client), ret);
}

export fn exports_weir_plugin_http_filter_on_response_lazy(
    request: c.exports_weir_plugin_http_filter_borrow_request_t,
    response: c.exports_weir_plugin_http_filter_borrow_response_t,
    ret: *c.exports_weir_plugin_http_filter_response_action_t,
) void {
    defer c.weir_plugin_types_request_drop_borrow(request);
    defer c.weir_plugin_types_response_drop_borrow(response);
    tagResponse(ret);
}

// The same hooks, given whole heads.
export fn exports_weir_plugin_http_filter_on_request(
    request: *c.exports_weir_plugin_http_filter_request_head_t,
    ret: *c.exports_weir_plugin_http_filter_request_action_t,
) void {
    defer c.exports_weir_plugin_http_filter_request_head_free(request);
    const client = slice(request.client_address);
    answer(!denied(client) or tokenOkIn(request.headers), client, ret);
}

export fn exports_weir_plugin_http_filter_on_response(
    request: *c.exports_weir_plugin_http_filter_request_head_t,
    response: *c.exports_weir_plugin_http_filter_response_head_t,
    ret: *c.exports_weir_plugin_http_filter_response_action_t,
) void {
    defer c.exports_weir_plugin_http_filter_request_head_free(request);
    defer c.exports_weir_plugin_http_filter_response_head_free(response);
    tagResponse(ret);
}

// Body hooks are not declared in body_hooks(), so weir never calls these.
export fn exports_weir_plugin_http_filter_on_request_body(
    _: *c.exports_weir_plugin_http_filter_request_head_t,
    _: *c.filter_list_u8_t,
    _: *c.exports_weir_plugin_http_filter_body_action_t,
) void {
    @panic("not declared");
}

export fn exports_weir_plugin_http_filter_on_response_body(
    _: *c.exports_weir_plugin_http_filter_request_head_t,
    _: *c.exports_weir_plugin_http_filter_response_head_t,
    _: *c.filter_list_u8_t,
    _: *c.exports_weir_plugin_http_filter_body_action_t,
) void {
    @panic("not declared");
}
