/*
 * Tollgate browser widgets (API.md §12), served by the server as GET /widget.js.
 * Plain JavaScript: no build step, no dependencies, and no network traffic except to the
 * configured base-url.
 *
 *   <script src="https://tollgate.example.com/widget.js" defer></script>
 *
 *   <tollgate-usage base-url="https://tollgate.example.com" publishable-key="tg_pk_live_…"
 *                   user-token="tg_ut_…" limit="images_daily"></tollgate-usage>
 *     One limit of the signed-in user (every limit of the user when `limit` is absent), from
 *     GET {base-url}/v1/me/usage. Each limit is a role="progressbar" element with
 *     aria-valuemin 0, aria-valuemax = quota, aria-valuenow = used + reserved (capped at the
 *     quota), an aria-label naming the limit, the text "N of M left" and when it resets, in
 *     the viewer's locale. `el.refresh()` reloads (and returns a promise of the reload); so does
 *     `window.dispatchEvent(new Event("tollgate:refresh"))`, for every widget on the page.
 *     The user token is minted by the app's backend (POST /v1/user-tokens, secret key).
 *
 *   <tollgate-pricing base-url="https://tollgate.example.com" publishable-key="tg_pk_live_…">
 *     The public plans, from GET {base-url}/v1/plans: one card a plan with its name, price,
 *     description, features and limits ("5 per day").
 *
 * Both set data-state on themselves: "loading", "ready" or "error" (an error also renders a
 * short role="alert" message, and data-error names the cause: "invalid_key", "forbidden",
 * "network", "unknown_limit", "config" or another code the server answered). Changing an
 * attribute reloads. A page's origin must be listed in the environment's corsOrigins
 * (PATCH /v1/settings), or the browser blocks the answers and the widgets show an error.
 *
 * Theming: both use an open shadow root and read these CSS custom properties (set them on the
 * element or any ancestor):
 *   --tollgate-font           font shorthand of the whole widget      (default: inherit)
 *   --tollgate-text-color     main text                               (default: currentColor)
 *   --tollgate-muted-color    secondary text: reset time, descriptions (default: #6b7280)
 *   --tollgate-bar-color      the used part of a bar                  (default: #2563eb)
 *   --tollgate-track-color    the rest of a bar                       (default: #e5e7eb)
 *   --tollgate-warn-color     the used part when under 10 % is left   (default: #dc2626)
 *   --tollgate-error-color    error messages                          (default: #b91c1c)
 *   --tollgate-radius         corner radius of bars and cards         (default: 6px)
 *   --tollgate-bar-height     height of a bar                         (default: 8px)
 *   --tollgate-gap            space between limits and between cards  (default: 12px)
 *   --tollgate-card-background, --tollgate-card-border   pricing cards (default: transparent,
 *                                                         1px solid #e5e7eb)
 * Every piece also carries a `part` name for ::part() rules: usage: limit, header, label,
 * remaining, track, fill, resets, message; pricing: plans, card, name, price, description,
 * features, limits, message.
 */
(() => {
  "use strict";

  // A fetch that has not answered by then is abandoned and shown as a network error.
  const REQUEST_TIMEOUT_MS = 15000;
  // Under this share of the quota left, a bar takes --tollgate-warn-color.
  const WARN_REMAINING_PERCENT = 10;

  const SHARED_CSS = `
    :host { display: block; font: var(--tollgate-font, inherit);
            color: var(--tollgate-text-color, currentColor); }
    :host([hidden]) { display: none; }
    .message { margin: 0; }
    .message[role="alert"] { color: var(--tollgate-error-color, #b91c1c); }
    .muted { color: var(--tollgate-muted-color, #6b7280); font-size: 0.875em; }
  `;

  const USAGE_CSS = `${SHARED_CSS}
    .limits { display: grid; gap: var(--tollgate-gap, 12px); }
    .header { display: flex; justify-content: space-between; gap: 8px; margin-bottom: 4px; }
    .label { font-weight: 600; }
    .track { height: var(--tollgate-bar-height, 8px); border-radius: var(--tollgate-radius, 6px);
             background: var(--tollgate-track-color, #e5e7eb); overflow: hidden; }
    .fill { height: 100%; background: var(--tollgate-bar-color, #2563eb);
            border-radius: inherit; transition: width 0.3s ease; }
    [data-warn] .fill { background: var(--tollgate-warn-color, #dc2626); }
    .resets { margin-top: 4px; }
    :host([data-state="loading"]) .limits { opacity: 0.7; }
  `;

  const PRICING_CSS = `${SHARED_CSS}
    .plans { display: grid; gap: var(--tollgate-gap, 12px); list-style: none; margin: 0;
             padding: 0; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); }
    .card { border: var(--tollgate-card-border, 1px solid #e5e7eb);
            border-radius: var(--tollgate-radius, 6px); padding: 16px;
            background: var(--tollgate-card-background, transparent); }
    .name { margin: 0 0 4px; font-size: 1.125em; }
    .price { margin: 0 0 8px; font-size: 1.25em; font-weight: 600; }
    .description { margin: 0 0 8px; }
    .features, .limits { margin: 8px 0 0; padding-left: 1.2em; }
  `;

  // Builds an element. Strings become text nodes, never markup: plan names, labels and ids
  // come from the server.
  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null && value !== false) {
        element.setAttribute(name, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      element.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return element;
  }

  // Why a load failed: a code for data-error and the end of a short sentence that the element
  // begins ("Your usage could not be loaded: ").
  class WidgetError extends Error {
    constructor(code, reason) {
      super(reason);
      this.code = code;
    }
  }

  const STATUS_REASONS = {
    401: ["invalid_key", "the sign-in has expired or is not valid. Reload the page."],
    403: ["forbidden", "this page is not allowed to read it."],
  };

  // GET {baseUrl}{path} with the given headers; resolves to the parsed JSON body, rejects with
  // a WidgetError. A CORS refusal is indistinguishable from a network failure in a browser.
  async function getJson(baseUrl, path, headers, signal) {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), REQUEST_TIMEOUT_MS);
    const abort = () => timeout.abort();
    signal.addEventListener("abort", abort, { once: true });
    let response;
    try {
      response = await fetch(baseUrl.replace(/\/+$/, "") + path, {
        method: "GET",
        headers: { Accept: "application/json", ...headers },
        mode: "cors",
        credentials: "omit",
        cache: "no-store",
        signal: timeout.signal,
      });
    } catch (error) {
      if (signal.aborted) throw error;
      throw new WidgetError("network", "the server could not be reached.");
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", abort);
    }
    if (response.ok) {
      try {
        return await response.json();
      } catch {
        throw new WidgetError("bad_answer", "the server's answer could not be read.");
      }
    }
    let code = null;
    try {
      code = (await response.json()).error.code;
    } catch {
      // A body that is not the API's error body: the status alone says enough.
    }
    const [fallbackCode, reason] = STATUS_REASONS[response.status] || [
      `http_${response.status}`,
      `the server answered HTTP ${response.status}.`,
    ];
    throw new WidgetError(typeof code === "string" ? code : fallbackCode, reason);
  }

  // A constructed style sheet, shared by every element of a class, passes a page's strict
  // Content-Security-Policy, where a <style> element would need 'unsafe-inline'.
  function adoptStyles(root, elementClass) {
    if ("adoptedStyleSheets" in root && typeof CSSStyleSheet.prototype.replaceSync === "function") {
      if (!Object.prototype.hasOwnProperty.call(elementClass, "_sheet")) {
        elementClass._sheet = new CSSStyleSheet();
        elementClass._sheet.replaceSync(elementClass.css);
      }
      root.adoptedStyleSheets = [elementClass._sheet];
      return;
    }
    const style = document.createElement("style");
    style.textContent = elementClass.css;
    root.append(style);
  }

  // The shared life of both elements: an open shadow root, attributes that reload, one load at
  // a time (a newer one abandons an older one), and data-state.
  class TollgateElement extends HTMLElement {
    constructor() {
      super();
      this.attachShadow({ mode: "open" });
      adoptStyles(this.shadowRoot, this.constructor);
      this._content = h("div", { part: "content" });
      this.shadowRoot.append(this._content);
      this._controller = null;
      this._scheduled = null;
      this._hasContent = false;
    }

    connectedCallback() {
      this._schedule();
    }

    disconnectedCallback() {
      if (this._controller) this._controller.abort();
      this._controller = null;
    }

    attributeChangedCallback(name, oldValue, newValue) {
      if (oldValue !== newValue && this.isConnected) this._schedule();
    }

    /** Reloads now; the promise settles when the widget shows the answer or the error. */
    refresh() {
      this._scheduled = null;
      return this._load();
    }

    // Several attributes set in one task reload once.
    _schedule() {
      if (this._scheduled) return this._scheduled;
      this._scheduled = Promise.resolve().then(() => {
        if (!this._scheduled) return undefined;
        this._scheduled = null;
        return this.isConnected ? this._load() : undefined;
      });
      return this._scheduled;
    }

    async _load() {
      if (this._controller) this._controller.abort();
      const controller = new AbortController();
      this._controller = controller;
      this.setAttribute("data-state", "loading");
      this.setAttribute("aria-busy", "true");
      if (!this._hasContent) this._show(h("p", { class: "message muted", part: "message" }, "Loading…"));
      try {
        const missing = this.constructor.requiredAttributes.filter((name) => !this.getAttribute(name));
        if (missing.length > 0) {
          throw new WidgetError("config", `the element needs the attribute ${missing.join(", ")}.`);
        }
        const answer = await this._fetch(controller.signal);
        if (controller.signal.aborted) return;
        this._show(this._render(answer));
        this._hasContent = true;
        this.removeAttribute("data-error");
        this.setAttribute("data-state", "ready");
      } catch (error) {
        if (controller.signal.aborted) return;
        const widgetError =
          error instanceof WidgetError ? error : new WidgetError("error", "something went wrong.");
        const sentence = `${this.constructor.subject} could not be loaded: ${widgetError.message}`;
        this._show(h("p", { class: "message", part: "message", role: "alert" }, sentence));
        this._hasContent = false;
        this.setAttribute("data-error", widgetError.code);
        this.setAttribute("data-state", "error");
      } finally {
        if (this._controller === controller) {
          this._controller = null;
          this.removeAttribute("aria-busy");
        }
      }
    }

    _show(node) {
      this._content.replaceChildren(node);
    }
  }

  function formatNumber(n) {
    return new Intl.NumberFormat().format(n);
  }

  // ------------------------------------------------------------------ <tollgate-usage>

  class TollgateUsage extends TollgateElement {
    static css = USAGE_CSS;
    static subject = "Your usage";
    static requiredAttributes = ["base-url", "publishable-key", "user-token"];
    static get observedAttributes() {
      return ["base-url", "publishable-key", "user-token", "limit"];
    }

    constructor() {
      super();
      this._onRefresh = () => {
        this.refresh();
      };
    }

    connectedCallback() {
      window.addEventListener("tollgate:refresh", this._onRefresh);
      super.connectedCallback();
    }

    disconnectedCallback() {
      window.removeEventListener("tollgate:refresh", this._onRefresh);
      super.disconnectedCallback();
    }

    _fetch(signal) {
      return getJson(
        this.getAttribute("base-url"),
        "/v1/me/usage",
        {
          Authorization: `Bearer ${this.getAttribute("publishable-key")}`,
          "X-Tollgate-User-Token": this.getAttribute("user-token"),
        },
        signal,
      );
    }

    _render(usage) {
      const wanted = this.getAttribute("limit");
      const all = Array.isArray(usage && usage.limits) ? usage.limits : [];
      const limits = wanted ? all.filter((limit) => limit.limitId === wanted) : all;
      if (wanted && limits.length === 0) {
        throw new WidgetError("unknown_limit", `your plan has no limit named "${wanted}".`);
      }
      if (limits.length === 0) {
        return h("p", { class: "message muted", part: "message" }, "Your plan has no limits.");
      }
      return h("div", { class: "limits" }, limits.map(renderLimit));
    }
  }

  function renderLimit(limit) {
    const quota = Number(limit.quota) || 0;
    const inUse = (Number(limit.used) || 0) + (Number(limit.reserved) || 0);
    const remaining = Number(limit.remaining) || 0;
    const name = limit.label || limit.limitId;
    const left = `${formatNumber(remaining)} of ${formatNumber(quota)} left`;
    const percent = quota > 0 ? Math.min(100, (inUse / quota) * 100) : 100;
    const warn = remaining * 100 < quota * WARN_REMAINING_PERCENT || remaining === 0;
    const resets = limit.kind === "concurrency" ? null : renderResets(limit);
    // Set through the CSSOM, which a strict Content-Security-Policy allows (a style attribute
    // it does not).
    const fill = h("div", { class: "fill", part: "fill" });
    fill.style.width = `${percent.toFixed(2)}%`;
    return h(
      "div",
      {
        class: "limit",
        part: "limit",
        role: "progressbar",
        "aria-label": name,
        "aria-valuemin": 0,
        "aria-valuemax": quota,
        // ARIA wants the value inside [min, max]; usage past a soft limit shows as full.
        "aria-valuenow": Math.min(inUse, quota),
        "aria-valuetext": resets ? `${left}, ${resets.textContent}` : left,
        "data-limit-id": limit.limitId,
        "data-warn": warn ? "" : null,
      },
      h(
        "div",
        { class: "header", part: "header" },
        h("span", { class: "label", part: "label" }, name),
        h("span", { class: "remaining", part: "remaining" }, left),
      ),
      h("div", { class: "track", part: "track" }, fill),
      resets,
    );
  }

  // "Resets <date>" in the viewer's locale and time zone; "never resets" without a reset time.
  function renderResets(limit) {
    const attributes = { class: "resets muted", part: "resets" };
    if (!limit.resetsAt) {
      // A first_use window that has not opened yet has neither a start nor a reset time.
      const text = limit.windowStart ? "never resets" : "starts counting at first use";
      return h("div", attributes, text);
    }
    const when = new Date(limit.resetsAt);
    if (Number.isNaN(when.getTime())) return null;
    const formatted = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(
      when,
    );
    return h("div", attributes, "Resets ", h("time", { datetime: limit.resetsAt }, formatted));
  }

  // ------------------------------------------------------------------ <tollgate-pricing>

  class TollgatePricing extends TollgateElement {
    static css = PRICING_CSS;
    static subject = "The plans";
    static requiredAttributes = ["base-url", "publishable-key"];
    static get observedAttributes() {
      return ["base-url", "publishable-key"];
    }

    _fetch(signal) {
      return getJson(
        this.getAttribute("base-url"),
        "/v1/plans",
        { Authorization: `Bearer ${this.getAttribute("publishable-key")}` },
        signal,
      );
    }

    _render(document_) {
      const plans = Array.isArray(document_ && document_.plans) ? document_.plans : [];
      if (plans.length === 0) {
        return h("p", { class: "message muted", part: "message" }, "No plans are available.");
      }
      return h(
        "ul",
        { class: "plans", part: "plans" },
        plans.map((plan) => renderPlan(plan, document_.defaultPlan)),
      );
    }
  }

  function renderPlan(plan, defaultPlan) {
    const features = Array.isArray(plan.features) ? plan.features : [];
    const limits = Array.isArray(plan.limits) ? plan.limits : [];
    return h(
      "li",
      {
        class: "card",
        part: "card",
        "data-plan-id": plan.id,
        "data-default": plan.id === defaultPlan ? "" : null,
      },
      h("h3", { class: "name", part: "name" }, plan.name || plan.id),
      plan.price ? h("p", { class: "price", part: "price" }, formatPrice(plan.price, plan.billing)) : null,
      plan.description ? h("p", { class: "description muted", part: "description" }, plan.description) : null,
      features.length > 0
        ? h(
            "ul",
            { class: "features", part: "features" },
            features.map((f) => h("li", {}, String(f))),
          )
        : null,
      limits.length > 0
        ? h("ul", { class: "limits", part: "limits", "aria-label": "Limits" }, limits.map(renderPlanLimit))
        : null,
    );
  }

  // "$19 / month", "$19.99 / month", "€45 / 3 months", from minor units (cents) in the viewer's
  // locale; whole amounts without decimals.
  function formatPrice(price, billing) {
    const amount = Number(price.amount) || 0;
    let money;
    try {
      const currency = { style: "currency", currency: price.currency };
      const digits = new Intl.NumberFormat(undefined, currency).resolvedOptions().maximumFractionDigits;
      const scale = 10 ** digits;
      const whole = amount % scale === 0 ? { minimumFractionDigits: 0, maximumFractionDigits: 0 } : {};
      money = new Intl.NumberFormat(undefined, { ...currency, ...whole }).format(amount / scale);
    } catch {
      // A currency code Intl does not know: show the minor units as they are.
      money = `${formatNumber(amount)} ${String(price.currency || "").toUpperCase()} (minor units)`;
    }
    const interval = price.interval || (billing && billing.interval);
    if (!interval) return money;
    const count = price.interval ? 1 : Number(billing && billing.intervalCount) || 1;
    return count > 1 ? `${money} / ${count} ${interval}s` : `${money} / ${interval}`;
  }

  // "Images per day: 5 per day", "Parallel renders: 2 at a time".
  function renderPlanLimit(limit) {
    const unit = limit.unit && limit.unit !== "count" ? ` ${limit.unit}` : "";
    const amount = `${formatNumber(Number(limit.quota) || 0)}${unit}`;
    const text =
      limit.kind === "concurrency" ? `${amount} at a time` : `${amount} ${describeWindow(limit.window)}`;
    return h(
      "li",
      { "data-limit-id": limit.id },
      h("span", { class: "limit-label" }, limit.label || limit.id),
      ": ",
      text,
    );
  }

  function describeWindow(window_) {
    if (!window_) return "";
    switch (window_.type) {
      case "calendar":
        return `per ${window_.period}`;
      case "subscription":
        return "per billing period";
      case "rolling":
        return `per ${describeSeconds(window_.seconds)} (rolling)`;
      case "first_use":
        return `for ${describeSeconds(window_.seconds)} from first use`;
      case "lifetime":
        return "in total";
      default:
        return "";
    }
  }

  function describeSeconds(seconds) {
    const units = [
      [86400, "day"],
      [3600, "hour"],
      [60, "minute"],
    ];
    for (const [size, name] of units) {
      if (seconds >= size && seconds % size === 0) {
        const n = seconds / size;
        return n === 1 ? name : `${formatNumber(n)} ${name}s`;
      }
    }
    return `${formatNumber(seconds)} seconds`;
  }

  if (!customElements.get("tollgate-usage")) customElements.define("tollgate-usage", TollgateUsage);
  if (!customElements.get("tollgate-pricing")) customElements.define("tollgate-pricing", TollgatePricing);
})();
