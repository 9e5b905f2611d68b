// The gate scanner: decodes a QR (BarcodeDetector, else the bundled jsQR), verifies the token offline
// with WebCrypto against the cached JWKS, applies the checkpoint policy (the rules of signing/policy.py)
// and shows a full-screen verdict. Online, it also asks /v1/verify; scans made while the network is down
// are queued and sent once when it returns (the server drops a repeated scan_id).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const store = {
    get: (k, d) => { try { const v = localStorage.getItem(k); return v === null ? d : JSON.parse(v); } catch { return d; } },
    set: (k, v) => localStorage.setItem(k, JSON.stringify(v)),
  };
  const TYP = "hcs+jwt";
  const LEEWAY = 60; // a cheap phone's clock may lag the service's by this much
  const STALE_KEYS_MS = 24 * 3600 * 1000;
  const HALF_ORDER = 0x7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8n; // P-256 n / 2
  const WORDS = {
    ok: "绿码 · 签名有效 Green, signature valid", G: "绿码 Green", Y: "黄码 Yellow code", R: "红码 Red code",
    test_age: "核酸检测超时 No recent negative test", vaccination: "未完成疫苗接种 Vaccination incomplete",
    expired: "二维码已过期 Code expired", bad_signature: "签名无效 Signature invalid (altered?)",
    unknown_key: "未知密钥 Unknown key", malformed: "不是健康码 Not a health code", wrong_issuer: "签发方不符 Wrong issuer",
    wrong_type: "不是健康码 Not a health code", not_yet_valid: "时间不符 Not yet valid", no_keys: "无公钥缓存 No keys cached",
    bad_handle: "二维码无效 Code invalid", valid_token: "二维码无效 Code invalid",
  };

  // ---- keys: the JWKS, cached in page storage, revalidated with its ETag when its max-age has passed ----
  let keyring = new Map(); // kid -> [{alg, key}]
  let issuer = store.get("hc-issuer", null);

  const b64url = (s) => {
    const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  };

  async function importKeys(jwks) {
    const ring = new Map();
    for (const jwk of jwks.keys || []) {
      try {
        const algo = jwk.alg === "ES256" ? { name: "ECDSA", namedCurve: "P-256" } : { name: "Ed25519" };
        const key = await crypto.subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, algo, false, ["verify"]);
        if (!ring.has(jwk.kid)) ring.set(jwk.kid, []);
        ring.get(jwk.kid).push({ alg: jwk.alg, key });
      } catch { /* an algorithm this browser lacks (Ed25519 on old ones): its tokens read as unknown_key */ }
    }
    keyring = ring;
    // Verdicts go on offline, but a key withdrawn since the last fetch is still trusted: say so after a day.
    const fetched = store.get("hc-jwks", {}).fetched || 0, stale = Date.now() - fetched > STALE_KEYS_MS;
    $("keys").dataset.stale = String(stale);
    $("keys").textContent = (stale ? "⚠ 公钥超过一天未更新 keys not refreshed for over a day · " : "") +
      `公钥 keys: ${ring.size} · ${new Date(fetched).toLocaleString()}`;
  }

  async function refreshKeys(force) {
    const cached = store.get("hc-jwks", null);
    if (cached && keyring.size === 0) await importKeys(cached.jwks);
    if (!force && cached && Date.now() - cached.fetched < cached.maxAge * 1000) return;
    try {
      if (!issuer) {
        const cfg = await (await fetch("/scan/config.json")).json();
        issuer = cfg.issuer;
        store.set("hc-issuer", issuer);
      }
      const headers = cached && cached.etag ? { "If-None-Match": cached.etag } : {};
      const r = await fetch("/.well-known/jwks.json", { headers, cache: "no-store" });
      const maxAge = Number((/max-age=(\d+)/.exec(r.headers.get("Cache-Control") || "") || [0, 60])[1]);
      if (r.status === 304 && cached) {
        store.set("hc-jwks", { ...cached, fetched: Date.now(), maxAge });
      } else if (r.ok) {
        const jwks = await r.json();
        store.set("hc-jwks", { jwks, etag: r.headers.get("ETag"), fetched: Date.now(), maxAge });
        await importKeys(jwks);
      }
    } catch { /* offline: the cached keys stand */ }
    await importKeys((store.get("hc-jwks", null) || { jwks: { keys: [] } }).jwks);
  }

  // ---- the token: the same checks, in the same order, as signing/jws.py's TokenVerifier ----
  const isInt = (v) => Number.isInteger(v);
  async function verifyOffline(token, now) {
    const bad = (reason) => ({ valid: false, reason, claims: null });
    if (typeof token !== "string" || token.length > 2048) return bad("malformed");
    const parts = token.split(".");
    if (parts.length !== 3) return bad("malformed");
    let header, payload, sig;
    try {
      header = JSON.parse(new TextDecoder().decode(b64url(parts[0])));
      payload = b64url(parts[1]);
      sig = b64url(parts[2]);
    } catch { return bad("malformed"); }
    if (!header || typeof header !== "object" || Object.keys(header).sort().join() !== "alg,kid,typ") return bad("malformed");
    if (keyring.size === 0) return bad("no_keys");
    const all = keyring.get(header.kid) || [];
    if (!all.length) return bad("unknown_key");
    const candidates = all.filter((k) => k.alg === header.alg);
    if (!candidates.length || sig.length !== 64) return bad("bad_signature");
    if (header.alg === "ES256") {
      const s = BigInt("0x" + Array.from(sig.slice(32), (b) => b.toString(16).padStart(2, "0")).join(""));
      if (s > HALF_ORDER) return bad("bad_signature"); // one valid spelling per token, as the service
    }
    const data = new TextEncoder().encode(parts[0] + "." + parts[1]);
    let verified = false;
    for (const c of candidates) {
      const algo = c.alg === "ES256" ? { name: "ECDSA", hash: "SHA-256" } : { name: "Ed25519" };
      if (await crypto.subtle.verify(algo, c.key, sig, data)) { verified = true; break; }
    }
    if (!verified) return bad("bad_signature");
    if (header.typ !== TYP) return bad("wrong_type");
    let claims;
    try { claims = JSON.parse(new TextDecoder().decode(payload)); } catch { return bad("malformed"); }
    if (!claims || typeof claims !== "object" || Array.isArray(claims)) return bad("malformed");
    if (issuer && claims.iss !== issuer) return bad("wrong_issuer");
    const flag = (v) => v === 0 || v === 1;
    const nt = claims.nt === undefined ? 0 : claims.nt, ver = claims.ver === undefined ? 0 : claims.ver;
    if (!isInt(claims.iat) || !isInt(claims.exp) || typeof claims.sub !== "string" || !["G", "Y", "R"].includes(claims.st) ||
        !flag(claims.pop) || !flag(claims.vac) || !isInt(ver) || ver < 0 || !isInt(nt) || nt < 0) return bad("malformed");
    if (claims.exp <= now) return bad("expired");
    if (claims.iat > now + LEEWAY) return bad("not_yet_valid");
    return { valid: true, reason: "ok", claims };
  }

  // ---- the checkpoint's policy: signing/policy.py's failed_rules, read off the token ----
  function policy() {
    const hours = parseInt($("max-age").value, 10);
    const p = {};
    if (hours >= 1 && hours <= 720) p.max_test_age_hours = hours;
    if ($("need-vaccine").checked) p.require_vaccination = true;
    return p;
  }
  function failedRules(p, claims, now) {
    const failed = [];
    const nt = isInt(claims.nt) ? claims.nt : null;
    if (p.max_test_age_hours !== undefined && (nt === null || now - nt > p.max_test_age_hours * 3600)) failed.push("test_age");
    if (p.require_vaccination && claims.vac !== 1) failed.push("vaccination");
    return failed;
  }

  // ---- the verdict ----
  let hideTimer = 0;
  function show(pass, reason, decodedAt) {
    const v = $("verdict");
    v.dataset.pass = String(pass);
    v.dataset.reason = reason;
    $("verdict-word").textContent = pass ? "通行 PASS" : "禁止 STOP";
    $("verdict-reason").textContent = reason.split(",").map((r) => WORDS[r] || r).join(" · ");
    $("verdict-online").textContent = "";
    v.hidden = false;
    clearTimeout(hideTimer);
    hideTimer = setTimeout(() => { v.hidden = true; }, 5000); // the gate moves on by itself
    if (decodedAt !== undefined) {
      // Measured to the frame that shows it: decode-to-verdict as the gate sees it.
      requestAnimationFrame(() => { v.dataset.ms = (performance.now() - decodedAt).toFixed(1); });
    }
  }

  function verdictOf(result, p, now) {
    if (!result.valid) return [false, result.reason];
    const failed = failedRules(p, result.claims, now);
    if (result.claims.st !== "G") failed.unshift(result.claims.st);
    return failed.length ? [false, failed.join(",")] : [true, "ok"];
  }

  // ---- online checks and the queue of scans made while offline ----
  const settings = () => store.get("hc-settings", {});
  function randomId() {
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  async function send(item) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 4000);
    try {
      // scanned_at: a queued scan's token is checked, and the scan recorded, as of when it was made.
      const body = { token: item.token, checkpoint: item.checkpoint, scan_id: item.scan_id, scanned_at: item.scanned_at };
      if (Object.keys(item.policy).length) body.policy = item.policy;
      const r = await fetch("/v1/verify", {
        method: "POST", signal: ctl.signal, cache: "no-store",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + settings().key },
        body: JSON.stringify(body),
      });
      if (r.status >= 500 || r.status === 429) return null; // come back later
      return { status: r.status, body: await r.json() };
    } catch { return null; } finally { clearTimeout(timer); }
  }
  function showQueue() {
    const n = store.get("hc-queue", []).length;
    $("queue").dataset.count = String(n);
    $("queue").textContent = n ? `待补传 queued: ${n}` : "";
  }
  let flushing = false;
  async function flush() {
    if (flushing || !settings().online || !settings().key) return;
    flushing = true;
    try {
      for (;;) {
        const queue = store.get("hc-queue", []);
        if (!queue.length) break;
        if ((await send(queue[0])) === null) break;
        store.set("hc-queue", store.get("hc-queue", []).filter((q) => q.scan_id !== queue[0].scan_id));
        showQueue();
      }
    } finally { flushing = false; showQueue(); }
  }

  async function online(item) {
    const answer = await send(item);
    if (answer === null) {
      store.set("hc-queue", [...store.get("hc-queue", []), item]);
      showQueue();
      $("verdict-online").textContent = "离线核验，联网后补传 Checked offline; sent when back online";
      return;
    }
    const b = answer.body;
    if (answer.status !== 200) { $("verdict-online").textContent = `在线核验失败 online check refused: ${b.title || answer.status}`; return; }
    const failed = b.valid ? [...(b.current_colour && b.current_colour !== "green" ? [b.current_colour[0].toUpperCase()] : []), ...(b.failed_rules || [])] : [b.reason];
    if (failed.length) show(false, failed.join(","));
    $("verdict").dataset.online = b.current_colour || "none";
    $("verdict-online").textContent = `在线 online: ${WORDS[(b.current_colour || " ")[0].toUpperCase()] || b.reason}`;
  }

  // ---- scanning ----
  let last = { token: "", at: 0 };
  async function handle(token, decodedAt) {
    if (token === last.token && decodedAt - last.at < 3000) return;
    last = { token, at: decodedAt };
    const now = Math.floor(Date.now() / 1000);
    const p = policy();
    const result = await verifyOffline(token, now);
    const [pass, reason] = verdictOf(result, p, now);
    show(pass, reason, decodedAt);
    const s = settings();
    if (s.online && s.key && result.reason !== "malformed") {
      await online({ token, checkpoint: $("checkpoint").value || "gate", policy: p, scan_id: randomId(), scanned_at: now });
    }
  }

  const detector = "BarcodeDetector" in window ? new window.BarcodeDetector({ formats: ["qr_code"] }) : null;
  async function decode(source, width, height) {
    if (detector) {
      try { const found = await detector.detect(source); if (found.length) return found[0].rawValue; } catch { /* fall through */ }
    }
    const canvas = $("grab"), scale = Math.min(1, 800 / Math.max(width, height));
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
    const found = window.jsQR(ctx.getImageData(0, 0, canvas.width, canvas.height).data, canvas.width, canvas.height, { inversionAttempts: "dontInvert" });
    return found ? found.data : null;
  }

  async function cameraLoop() {
    const video = $("video");
    if (video.readyState >= 2 && $("verdict").hidden) {
      const text = await decode(video, video.videoWidth, video.videoHeight);
      if (text) await handle(text, performance.now());
    }
    setTimeout(cameraLoop, 120);
  }

  $("camera").addEventListener("click", async () => {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      $("video").srcObject = stream;
      await $("video").play();
      $("camera").disabled = true;
      cameraLoop();
    } catch (e) { show(false, "camera: " + e.name); }
  });
  $("image").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const started = performance.now();
    const bitmap = await createImageBitmap(file);
    const text = await decode(bitmap, bitmap.width, bitmap.height);
    const decodedAt = performance.now();
    e.target.value = "";
    $("verdict").dataset.decodeMs = (decodedAt - started).toFixed(1); // reading the photo, before the verdict
    if (text) await handle(text, decodedAt); else show(false, "malformed");
  });
  $("verdict").addEventListener("click", () => { $("verdict").hidden = true; });

  // ---- settings, kept in page storage (the scanner key never goes in the URL) ----
  function loadSettings() {
    const s = settings();
    $("checkpoint").value = s.checkpoint || "gate-1";
    $("max-age").value = s.maxAge || "";
    $("need-vaccine").checked = !!s.needVaccine;
    $("online").checked = !!s.online;
    $("scanner-key").value = s.key || "";
  }
  $("save").addEventListener("click", () => {
    store.set("hc-settings", {
      checkpoint: $("checkpoint").value, maxAge: $("max-age").value, needVaccine: $("need-vaccine").checked,
      online: $("online").checked, key: $("scanner-key").value,
    });
    $("settings").open = false;
    flush();
  });

  const net = () => { $("net").dataset.online = String(navigator.onLine); };
  window.addEventListener("online", () => { net(); refreshKeys(true); flush(); });
  window.addEventListener("offline", net);
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/scan/sw.js").catch(() => {});
  loadSettings();
  net();
  showQueue();
  refreshKeys(false).then(() => { document.body.dataset.ready = "true"; flush(); });
  setInterval(() => { refreshKeys(false); flush(); }, 30000);
})();
