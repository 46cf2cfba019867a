// Runs javascript/sdfix_ab.js in a Node vm context with a small fake DOM (no browser, no npm).
// Usage: node vm_runner.js <script-under-test> < test-body.js
// The test body is a function body; it gets `load(options)` and `parseInto(parent, html)` and
// returns a JSON-serialisable value (or a promise of one), printed on stdout for the Python test.
"use strict";
const fs = require("fs");
const vm = require("vm");

class FakeElement {
    constructor(tagName, ownerDocument) {
        this.tagName = tagName.toUpperCase();
        this.ownerDocument = ownerDocument;
        this.children = [];
        this.parentNode = null;
        this.attributes = new Map();
        this.style = {};
        this.listeners = {};
        this.textContent = "";
        this.rect = {left: 0, top: 0, width: 200, height: 100};
        const self = this;
        this.classList = {
            add(name) { const c = self._classes(); if (!c.includes(name)) self.className = c.concat(name).join(" "); },
            remove(name) { self.className = self._classes().filter((c) => c !== name).join(" "); },
            contains(name) { return self._classes().includes(name); },
        };
    }
    _classes() { return (this.getAttribute("class") || "").split(/\s+/).filter(Boolean); }
    get className() { return this.getAttribute("class") || ""; }
    set className(value) { this.setAttribute("class", value); }
    setAttribute(name, value) { this.attributes.set(name, String(value)); }
    getAttribute(name) { return this.attributes.has(name) ? this.attributes.get(name) : null; }
    hasAttribute(name) { return this.attributes.has(name); }
    appendChild(child) {
        if (child.parentNode) child.parentNode.removeChild(child);
        child.parentNode = this;
        this.children.push(child);
        return child;
    }
    removeChild(child) {
        const i = this.children.indexOf(child);
        if (i < 0) throw new Error("removeChild: not a child");
        this.children.splice(i, 1);
        child.parentNode = null;
        return child;
    }
    matches(selector) {
        // Compound simple selectors only: tag, .class, [attr] and [attr="value"].
        const m = /^([a-zA-Z][\w-]*)?((?:\.[\w-]+)*)((?:\[[\w-]+(?:="[^"]*")?\])*)$/.exec(selector.trim());
        if (!m) throw new Error("fake DOM cannot match selector " + selector);
        if (m[1] && m[1].toUpperCase() !== this.tagName) return false;
        for (const cls of (m[2] || "").split(".").filter(Boolean)) if (!this._classes().includes(cls)) return false;
        const attrRe = /\[([\w-]+)(?:="([^"]*)")?\]/g;
        let a;
        while ((a = attrRe.exec(m[3] || ""))) {
            if (!this.hasAttribute(a[1])) return false;
            if (a[2] !== undefined && this.getAttribute(a[1]) !== a[2]) return false;
        }
        return true;
    }
    querySelectorAll(selector) {
        const found = [];
        const walk = (node) => node.children.forEach((child) => { if (child.matches(selector)) found.push(child); walk(child); });
        walk(this);
        return found;
    }
    querySelector(selector) { return this.querySelectorAll(selector)[0] || null; }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    getBoundingClientRect() { return Object.assign({}, this.rect); }
    get clientWidth() { return this.rect.width; }
    get clientHeight() { return this.rect.height; }
    focus() { this.ownerDocument.activeElement = this; }
    setPointerCapture(id) { this.captured = id; }
    // Test helper: deliver an event to this element and its ancestors (bubbling), like the browser.
    dispatch(type, props) {
        const event = Object.assign({type: type, target: this, defaultPrevented: false,
            preventDefault() { this.defaultPrevented = true; }}, props || {});
        for (let node = this; node; node = node.parentNode) {
            (node.listeners[type] || []).forEach((fn) => fn.call(node, event));
        }
        return event;
    }
}

function makeDocument() {
    const document = {
        readyState: "complete",
        listeners: {},
        activeElement: null,
        createElement(tag) { return new FakeElement(tag, document); },
        addEventListener(type, fn) { (document.listeners[type] = document.listeners[type] || []).push(fn); },
        querySelectorAll(selector) { return document.body.querySelectorAll(selector); },
        querySelector(selector) { return document.body.querySelector(selector); },
    };
    document.documentElement = new FakeElement("html", document);
    document.body = document.documentElement.appendChild(new FakeElement("body", document));
    return document;
}

// Parses the well-formed markup lib_sdfix.ab.compare_html produces into `parent`.
function parseInto(parent, html) {
    const voids = new Set(["img", "br", "input", "meta", "link"]);
    const decode = (s) => s.replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&lt;/g, "<")
        .replace(/&gt;/g, ">").replace(/&amp;/g, "&");
    const tokenRe = /<\/([\w-]+)\s*>|<([\w-]+)((?:\s+[\w-]+(?:="[^"]*")?)*)\s*\/?>|([^<]+)/g;
    const stack = [parent];
    let t;
    while ((t = tokenRe.exec(html))) {
        const top = stack[stack.length - 1];
        if (t[1]) {
            if (top.tagName !== t[1].toUpperCase()) throw new Error("mismatched </" + t[1] + ">");
            stack.pop();
        } else if (t[2]) {
            const node = top.appendChild(parent.ownerDocument.createElement(t[2]));
            const attrRe = /([\w-]+)(?:="([^"]*)")?/g;
            let a;
            while ((a = attrRe.exec(t[3] || ""))) node.setAttribute(a[1], a[2] === undefined ? "" : decode(a[2]));
            if (!voids.has(t[2].toLowerCase())) stack.push(node);
        } else if (t[4] && t[4].trim()) {
            top.textContent += decode(t[4]);
        }
    }
    if (stack.length !== 1) throw new Error("unclosed elements in markup");
    return parent.children;
}

const source = fs.readFileSync(process.argv[2], "utf8");

// A fresh page with the script loaded, with the WebUI's onAfterUiUpdate hook (its script.js always
// defines it before extension scripts run); options.globals: extra window properties.
function load(options) {
    options = options || {};
    const document = makeDocument();
    const context = {document: document, console: console, setTimeout: setTimeout, clearTimeout: clearTimeout};
    context.window = context;
    const hooks = {afterUpdate: []};
    context.onAfterUiUpdate = (fn) => hooks.afterUpdate.push(fn);
    Object.assign(context, options.globals || {});
    vm.createContext(context);
    vm.runInContext(source, context, {filename: "sdfix_ab.js"});
    return {window: context, document: document, hooks: hooks};
}

const body = fs.readFileSync(0, "utf8");
Promise.resolve(new Function("load", "parseInto", body)(load, parseInto)).then((result) => {
    process.stdout.write(JSON.stringify(result === undefined ? null : result));
}, (err) => {
    process.stderr.write(String(err && err.stack || err));
    process.exitCode = 1;
});
