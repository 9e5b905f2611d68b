// The scanner's service worker: the page and its files stay available when the network is not, so a gate
// phone reloaded offline still scans (the keys are in the page's storage). Network first, so a release
// shows at once; the cached copy when the network fails or takes longer than three seconds.
"use strict";
const CACHE = "hc-scan-v1";
const FILES = ["/scan/", "/scan/config.json", "/web/scan.js", "/web/scan.css", "/web/jsqr.min.js"];

self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});
self.addEventListener("activate", (e) => {
  e.waitUntil(caches.keys().then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || url.origin !== self.location.origin || !FILES.includes(url.pathname)) return;
  const cached = () => caches.match(url.pathname).then((r) => r || Response.error());
  const network = new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error("slow")), 3000);
    fetch(e.request).then((r) => {
      if (r.ok) { const copy = r.clone(); caches.open(CACHE).then((c) => c.put(url.pathname, copy)); }
      resolve(r);
    }, reject);
  });
  e.respondWith(network.catch(cached));
});
