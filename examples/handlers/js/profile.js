// profile: a weir handler in JavaScript, written as a plain `fetch` event handler.
// `GET …/profile/{id}` (under whatever prefix the route has) fetches `/users/{id}` from the `users` cluster and
// `/orders?user={id}` from the `orders` cluster, both at once, and answers
// `{"user": …, "orders": …}`; 502 with the reason if either fails.
//
// The same code runs under any wasi:http host. weir routes each `fetch` by its host name,
// a cluster name, and refuses clusters the plugin is not granted (`clusters = [...]` in
// profile.toml).

const json = (status, document) =>
  new Response(JSON.stringify(document), {
    status,
    headers: { 'content-type': 'application/json' },
  });

async function getJson(url) {
  const response = await fetch(url, { headers: { accept: 'application/json' } });
  if (response.status !== 200) {
    throw new Error(`${new URL(url).host} answered ${response.status}`);
  }
  return response.json();
}

async function handle(request) {
  const match = new URL(request.url).pathname.match(/\/profile\/(\d+)$/);
  if (!match) return json(404, { error: 'try /profile/{id}' });
  const id = match[1];
  try {
    const [user, orders] = await Promise.all([
      getJson(`http://users/users/${id}`),
      getJson(`http://orders/orders?user=${id}`),
    ]);
    return json(200, { user, orders });
  } catch (e) {
    return json(502, { error: String(e.message ?? e) });
  }
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
