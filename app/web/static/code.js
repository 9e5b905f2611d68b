// The citizen's code page: asks its backend for the status (the page holds no key), paints the QR in the
// status colour, ticks a clock, shows the pop-up, and fetches a fresh code before the current one expires.
"use strict";
(() => {
  const T = {
    "zh-CN": {
      title: "健康码", other: "English", green: "绿码", yellow: "黄码", red: "红码",
      vaccinated: "已完成全程疫苗接种", doses: (n) => `已接种 ${n} 剂`, noVaccine: "无疫苗接种记录",
      test: (r, h) => `核酸检测：${r === "negative" ? "阴性" : "阳性"}（${h} 小时前）`, noTest: "无核酸检测记录",
      expires: (t) => `本码 ${t} 失效，到期前自动更新`, alertTitle: "请主动报备",
      area: (a) => `您近期到达过风险地区${a ? "：" + a : ""}。`, high: "高风险", medium: "中风险", low: "低风险",
      todo: (n) => n === 1 ? "请在抵达后 24 小时内完成 1 次核酸检测。" : n === 2 ? "请在 3 天内完成 2 次核酸检测（间隔 24 小时以上）。" :
        "持 48 小时内阴性证明抵达者 24 小时内完成 1 次核酸检测；其他人 3 天内完成 2 次检测（间隔 24 小时以上）。",
      deadline: (t) => `请于 ${t} 前完成。`, ok: "我知道了", error: "暂时无法获取健康码，正在重试…",
      noPerson: "请从小程序打开本页（演示：在地址后加 ?person=）",
    },
    en: {
      title: "Health code", other: "中文", green: "Green", yellow: "Yellow", red: "Red",
      vaccinated: "Vaccination complete", doses: (n) => `${n} dose(s)`, noVaccine: "No vaccination on record",
      test: (r, h) => `Nucleic-acid test: ${r} (${h} h ago)`, noTest: "No test on record",
      expires: (t) => `This code expires at ${t}; it renews itself before then`, alertTitle: "Please report your arrival",
      area: (a) => `You arrived recently from a risk area${a ? ": " + a : ""}.`, high: "high risk", medium: "medium risk", low: "low risk",
      todo: (n) => n === 1 ? "Take 1 nucleic-acid test within 24 hours of arrival." : n === 2 ? "Take 2 nucleic-acid tests within 3 days, at least 24 hours apart." :
        "With a negative test from the 48 hours before arrival: 1 test within 24 hours; otherwise 2 tests within 3 days, at least 24 hours apart.",
      deadline: (t) => `Complete by ${t}.`, ok: "OK", error: "Cannot fetch your code right now; retrying…",
      noPerson: "Open this page from the mini-program (demo: add ?person= to the address)",
    },
  };
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const person = params.get("person") || "";
  let lang = params.get("lang") || localStorage.getItem("hc-lang") || "zh-CN";
  if (!T[lang]) lang = "zh-CN";
  let status = null;
  let skew = 0; // server clock minus ours, in seconds
  let timer = 0;
  let alertShownFor = null;

  const fmt = (epoch, withDate) => new Date(epoch * 1000).toLocaleString(lang, {
    hour12: false, ...(withDate ? { month: "2-digit", day: "2-digit" } : {}), hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  function tick() {
    const now = Date.now() / 1000 + skew;
    $("clock").textContent = new Date(now * 1000).toLocaleString(lang, {
      hour12: false, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function paintQr(rows, colour) {
    const canvas = $("qr"), ctx = canvas.getContext("2d"), n = rows.length, px = canvas.width / n;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = colour;
    for (let y = 0; y < n; y++) for (let x = 0; x < n; x++)
      if (rows[y][x] === "1") ctx.fillRect(Math.floor(x * px), Math.floor(y * px), Math.ceil(px), Math.ceil(px));
  }

  function render() {
    const t = T[lang];
    document.documentElement.lang = lang;
    document.title = t.title;
    for (const el of document.querySelectorAll("[data-t]")) el.textContent = t[el.dataset.t];
    $("lang").textContent = t.other;
    if (!status) return;
    const s = status, card = $("card");
    card.dataset.colour = s.colour;
    card.dataset.state = "shown";
    card.dataset.expires = String(s.token_expires_at);
    $("qr").dataset.token = s.token;
    $("name").textContent = s.name || "";
    $("number").textContent = s.id_number || "";
    $("colour").textContent = t[s.colour];
    paintQr(s.qr, getComputedStyle(card).getPropertyValue("--c").trim());
    const v = s.vaccination || { doses: 0, complete: false };
    $("vaccine").dataset.complete = String(v.complete);
    $("vaccine").querySelector("span").textContent = v.complete ? t.vaccinated : v.doses ? t.doses(v.doses) : t.noVaccine;
    $("test").textContent = s.last_test ? t.test(s.last_test.result, s.last_test.hours_ago) + " · " + fmt(s.last_test.sampled_at, true) : t.noTest;
    $("expiry").textContent = t.expires(fmt(s.token_expires_at));
    const a = s.alert || {};
    $("alert-area").textContent = t.area(a.area_code ? `${a.area_code}（${t[a.level] || a.level}）` : "");
    $("alert-todo").textContent = t.todo(a.tests_needed);
    $("alert-deadline").textContent = a.deadline ? t.deadline(fmt(a.deadline, true)) : "";
    if (s.popup && alertShownFor !== s.version) {
      alertShownFor = s.version;
      $("alert").hidden = false;
    }
    if (!s.popup) $("alert").hidden = true;
  }

  async function load() {
    clearTimeout(timer);
    if (!person) { $("error").textContent = T[lang].noPerson; $("error").hidden = false; return; }
    try {
      const r = await fetch("/demo/backend/status", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ person }), cache: "no-store",
      });
      if (!r.ok) throw new Error(String(r.status));
      status = await r.json();
      skew = status.now - Date.now() / 1000;
      $("error").hidden = true;
      render();
      // Renew before expiry: a fifth of the code's life ahead, at least 2 s, at most 30 s.
      const life = status.token_expires_at - status.now;
      const margin = Math.max(2, Math.min(30, life / 5));
      timer = setTimeout(load, Math.max(1, life - margin) * 1000);
    } catch (e) {
      $("error").textContent = T[lang].error;
      $("error").hidden = false;
      timer = setTimeout(load, 5000);
    }
  }

  $("lang").addEventListener("click", () => {
    lang = lang === "en" ? "zh-CN" : "en";
    localStorage.setItem("hc-lang", lang);
    render();
    tick();
  });
  $("alert-ok").addEventListener("click", () => { $("alert").hidden = true; });
  render();
  tick();
  setInterval(tick, 1000);
  load();
})();
