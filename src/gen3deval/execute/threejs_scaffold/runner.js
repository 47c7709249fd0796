// gen3deval Three.js scaffold: runs ONE untrusted program and streams the result to stdout.
//
// This file is not run on its own: gen3deval/execute/threejs.py builds a single-script bundle
//   'use strict'; const __gen3devalTHREE = (function () { <three.core.js + three.module.js> })();
//   <this file>
// and (where Node supports it) a V8 startup snapshot of that bundle, so a fresh `node` starts with
// three already loaded (~0.1 s instead of ~0.2 s).
//
// Protocol. stdin: one line of JSON options ({"timeout_ms": N, "max_triangles": N}), then the program
// source (UTF-8). stdout: one line of JSON (the header), then `header.glb_bytes` bytes of GLB.
// The program's console output is captured inside the vm context and returned in `header.logs`.
//
// The program runs in a vm context with a timeout and microtaskMode 'afterEvaluate' (so async
// infinite loops hit the timeout too). The vm is NOT a security boundary: the boundary is the Node
// permission model (no fs writes, no child processes, no workers), an empty network namespace, a
// scrubbed environment, rlimits and a throw-away uid, all set up by the Python parent. Node is also
// started with --disallow-code-generation-from-strings, which makes the classic escape
// `THREE.Mesh.constructor.constructor('return process')()` fail in the host realm: we report it as
// a sandbox violation. Inside the context, eval/new Function stay available to the program.
//
// three's classes live in this (host) realm, so the program can reach the host's intrinsics through
// them: gen3devalHarden freezes them all (and the THREE namespace) before any program runs, and the
// exporter reads the program's objects defensively with captured primordials (see below), so a
// program cannot change how its object is exported (e.g. a toJSON planted on Object.prototype).

/* global __gen3devalTHREE */
'use strict';

function gen3devalMain(THREE, P) {
  const fs = require('fs');
  const vm = require('vm');
  const { performance } = require('perf_hooks');
  const exit = process.exit.bind(process);

  const writeAll = (buf) => {
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(1, buf, off, buf.length - off);
      } catch (e) {
        if (e && e.code === 'EAGAIN') continue;
        throw e;
      }
    }
  };
  const finish = (header, glb) => {
    header.ms_total = Math.round(performance.now());
    const head = Buffer.from(JSON.stringify(header) + '\n', 'utf8');
    writeAll(glb ? Buffer.concat([head, glb]) : head);
    exit(0);
  };

  // ---- input --------------------------------------------------------------------------------
  const input = fs.readFileSync(0);
  const nl = input.indexOf(10);
  const opts = JSON.parse(input.subarray(0, nl < 0 ? input.length : nl).toString('utf8'));
  const source = nl < 0 ? '' : input.subarray(nl + 1).toString('utf8');
  const deadline = Number(opts.timeout_ms) || 10000; // ms since process start
  const maxTriangles = Number(opts.max_triangles) || 5000000;
  const remaining = () => Math.max(1, Math.floor(deadline - performance.now()));

  // ---- errors -------------------------------------------------------------------------------
  // Thrown values are read defensively: a program can throw anything (a Proxy, an object with
  // getters); Node's own errors carry a `code` (timeouts, the permission model).
  const clip = (s, n) => (s.length > n ? s.slice(0, n) + ' [...]' : s);
  const describe = (e) => {
    try {
      if (e && (typeof e === 'object' || typeof e === 'function')) {
        const name = typeof e.name === 'string' ? e.name : 'Error';
        const message = typeof e.message === 'string' ? e.message : '';
        let where = '';
        const stack = typeof e.stack === 'string' ? e.stack : '';
        const m = /program\.js:(\d+)(?::(\d+))?/.exec(stack);
        if (m) where = ` (program.js line ${m[1]}${m[2] ? ', column ' + m[2] : ''})`;
        return clip(`${name}: ${message}${where}`, 800);
      }
      return clip(`uncaught value: ${String(e)}`, 800);
    } catch (_) {
      return 'an unprintable value was thrown';
    }
  };
  const syntaxMessage = (e) => {
    // V8's compile errors carry "program.js:LINE\n<the line>\n   ^^^\n\nSyntaxError: ..." in .stack.
    const stack = e && typeof e.stack === 'string' ? e.stack : String(e);
    const head = stack.split('\n    at ')[0].trim();
    const m = /^program\.js:(\d+)/.exec(head);
    const msg = `${e && e.name ? e.name : 'SyntaxError'}: ${e && e.message ? e.message : ''}`;
    return clip(m ? `${msg} (program.js line ${m[1]})` : msg, 800);
  };
  const classify = (e) => {
    let code = '';
    let name = '';
    let msg = '';
    try {
      code = e && typeof e.code === 'string' ? e.code : '';
      name = e && typeof e.name === 'string' ? e.name : '';
      msg = e && typeof e.message === 'string' ? e.message : '';
    } catch (_) {
      return 'runtime';
    }
    // A program could fake these codes, but only to classify its own failure differently.
    if (code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') return 'timeout';
    if (code === 'ERR_ACCESS_DENIED' || code === 'GEN3DEVAL_FORBIDDEN') return 'sandbox_violation';
    // Code generation is allowed inside the context, so this message comes from the host realm:
    // somebody reached a host Function constructor (X.constructor.constructor(...)).
    if (name === 'EvalError' && /Code generation from strings disallowed/.test(msg)) return 'sandbox_violation';
    if (name === 'ReferenceError' && /^(process|Buffer|global) is not defined$/.test(msg)) return 'sandbox_violation';
    if (/Array buffer allocation failed|out of memory/i.test(msg)) return 'memory';
    // WebAssembly.Memory is not code generation, so it works in the context: a huge memory (or grow)
    // fails with a RangeError once the address space or the declared maximum is exhausted.
    if (name === 'RangeError' && /^WebAssembly\.Memory(\.grow)?\(\): (could not allocate memory|Maximum memory size exceeded|Unable to grow)/i.test(msg)) return 'memory';
    return 'runtime';
  };
  const violationNote = (cls, e) => {
    if (cls !== 'sandbox_violation') return describe(e);
    if (e && e.name === 'EvalError') {
      return 'the program tried to leave the vm context (code generation in the host realm, e.g. ' +
        'X.constructor.constructor("return process")): ' + describe(e);
    }
    return 'the program tried to reach the host (process, Node modules, files): ' + describe(e);
  };

  // ---- context ------------------------------------------------------------------------------
  const ctx = vm.createContext({ THREE }, {
    name: 'gen3deval-program',
    codeGeneration: { strings: true, wasm: false },
    microtaskMode: 'afterEvaluate',
  });
  // Built inside the context so the program sees only context-realm functions; host helpers are
  // passed in once and kept in a closure.
  const PRELUDE = `(function (g, hostExport, BUILTINS) {
  'use strict';
  const T = g.THREE;
  const logs = [];
  let size = 0;
  const fmt = (a) => {
    try {
      if (typeof a === 'string') return a;
      const j = JSON.stringify(a);
      return (j === undefined ? String(a) : j).slice(0, 2000);
    } catch (e) {
      try { return String(a).slice(0, 2000); } catch (e2) { return '[unprintable]'; }
    }
  };
  let dropped = 0;
  const out = (level) => (...args) => {
    if (size > 60000) { dropped++; return; }
    const line = level + args.map(fmt).join(' ');
    size += line.length + 1;
    logs.push(line);
  };
  g.console = {
    log: out(''), info: out(''), debug: out(''), dir: out(''), table: out(''),
    warn: out('warn: '), error: out('error: '), trace: out('trace: '),
    assert: (c, ...a) => { if (!c) out('assertion failed: ')(...a); },
    group() {}, groupCollapsed() {}, groupEnd() {}, time() {}, timeEnd() {}, timeLog() {}, count() {},
  };
  g.module = { exports: {} };
  g.exports = g.module.exports;
  g.require = (name) => {
    if (name === 'three' || name === 'three/build/three.module.js' || name === 'three/build/three.core.js') return T;
    const id = String(name).replace(/^node:/, '');
    if (BUILTINS.includes(id.split('/')[0])) {
      const e = new Error("require('" + name + "'): Node modules are not available to programs");
      e.code = 'GEN3DEVAL_FORBIDDEN';
      throw e;
    }
    const e = new Error("Cannot find module '" + name + "': only 'three' is available (createObject receives THREE)");
    e.code = 'MODULE_NOT_FOUND';
    throw e;
  };
  const state = { status: 'pending', value: undefined, error: undefined };
  const find = () => {
    if (typeof createObject === 'function') return createObject;
    const m = g.module;
    if (m && m.exports && typeof m.exports.createObject === 'function') return m.exports.createObject;
    if (m && typeof m.exports === 'function') return m.exports;
    if (m && m.exports && typeof m.exports.default === 'function') return m.exports.default;
    return undefined;
  };
  const hide = (name, value) => Object.defineProperty(g, name, { value, enumerable: false, writable: false, configurable: false });
  hide('__gen3deval_call__', () => {
    const f = find();
    if (f === undefined) { state.status = 'missing'; return state; }
    const r = f(T);
    if (r && typeof r.then === 'function') {
      Promise.resolve(r).then((v) => { state.status = 'value'; state.value = v; },
                              (e) => { state.status = 'error'; state.error = e; });
    } else {
      state.status = 'value';
      state.value = r;
    }
    return state;
  });
  hide('__gen3deval_export__', () => hostExport(state.value));
  hide('__gen3deval_logs__', () => logs.join('\\n') + (dropped ? '\\n[... ' + dropped + ' more console calls dropped]' : ''));
})`;
  let exported = null;
  const prelude = new vm.Script(PRELUDE, { filename: 'gen3deval-prelude.js' }).runInContext(ctx);
  prelude(vm.runInContext('globalThis', ctx), (obj) => {
    exported = exportObject(P, obj, maxTriangles);
    return true;
  }, vm.runInContext(JSON.stringify(require('module').builtinModules), ctx));
  const run = (code, filename) =>
    new vm.Script(code, { filename }).runInContext(ctx, { timeout: remaining(), breakOnSigint: false });
  const logs = () => {
    try {
      const s = run('__gen3deval_logs__()', 'gen3deval-logs.js');
      return typeof s === 'string' ? s.slice(0, 65536) : '';
    } catch (_) {
      return '';
    }
  };
  const fail = (stage, cls, message) =>
    finish({ ok: false, stage, error_class: cls, message, logs: stage === 'compile' ? '' : logs() });

  // ---- compile and run ----------------------------------------------------------------------
  let script;
  try {
    script = new vm.Script(source, { filename: 'program.js' });
  } catch (e) {
    return fail('compile', 'syntax', syntaxMessage(e));
  }
  try {
    script.runInContext(ctx, { timeout: remaining(), breakOnSigint: false });
  } catch (e) {
    const cls = classify(e);
    return fail('run', cls, cls === 'timeout' ? 'the program did not finish within the time limit' : violationNote(cls, e));
  }
  let state;
  try {
    state = run('__gen3deval_call__()', 'gen3deval-call.js');
  } catch (e) {
    const cls = classify(e);
    return fail('createObject', cls,
      cls === 'timeout' ? 'createObject did not return within the time limit' : violationNote(cls, e));
  }
  if (state.status === 'missing') {
    return fail('createObject', 'no_geometry',
      'the program does not define createObject(THREE) (a function declaration, or module.exports.createObject)');
  }
  if (state.status === 'error') {
    const cls = classify(state.error);
    return fail('createObject', cls, violationNote(cls, state.error));
  }
  if (state.status !== 'value') {
    return fail('createObject', 'no_geometry', 'createObject returned a Promise that never settled');
  }
  try {
    run('__gen3deval_export__()', 'gen3deval-export.js');
  } catch (e) {
    const cls = classify(e);
    return fail('export', cls,
      cls === 'timeout' ? 'exporting the object did not finish within the time limit' : violationNote(cls, e));
  }
  const ex = exported;
  if (ex.error_class) return fail('export', ex.error_class, ex.message);
  return finish({
    ok: true, stage: 'done', error_class: null, message: '', logs: logs(),
    glb_bytes: ex.glb.length, triangles: ex.triangles, meshes: ex.meshes, skipped: ex.skipped,
  }, ex.glb);
}

// ---- export: world-space triangles grouped by material colour, as one GLB ---------------------
//
// Everything read from the program's object graph is untrusted: it may be a Proxy, have getters, or be
// an object of the program's own realm whose methods the program replaced. So the exporter calls no
// method of the program's objects except `updateWorldMatrix` (three's, or the program's: either way it
// only decides what the program built), reads each value once, accepts only real numbers
// (`typeof x === 'number'`, no valueOf) and copies typed arrays with the captured, realm-independent
// %TypedArray% methods before using them: a getter cannot change what was already validated. Its own
// state (Maps, growable arrays, the GLB writer) is private and built from the frozen intrinsics.
function exportObject(P, root, maxTriangles) {
  if (root === undefined || root === null) {
    return { error_class: 'no_geometry', message: `createObject returned ${root}, expected a THREE.Object3D` };
  }
  if (typeof root !== 'object' && typeof root !== 'function') {
    return { error_class: 'no_geometry', message: `createObject returned a value of type ${typeof root}, expected a THREE.Object3D` };
  }
  if (root.isObject3D !== true) {
    const what = root.isBufferGeometry === true ? 'a BufferGeometry (wrap it in a THREE.Mesh)'
      : root.isMaterial === true ? 'a Material' : `a value of type ${typeof root}`;
    return { error_class: 'no_geometry', message: `createObject returned ${what}, expected a THREE.Object3D` };
  }
  root.updateWorldMatrix(true, true);
  const groups = new P.Map(); // colour key -> { color, alpha, pos: Grow, idx: Grow, nv }
  let triangles = 0;
  let meshes = 0;
  let nonFinite = 0;
  let badIndex = 0;
  let badData = 0;
  const skipped = [];
  const num = (x) => (typeof x === 'number' ? x : NaN);
  const M = new P.Float64Array(16);
  const W = new P.Float64Array(16);

  // A column-major 4x4 (three's Matrix4.elements layout) read once from the program: 16 numbers.
  const readMatrix = (m, out) => {
    const e = m && (typeof m === 'object') ? m.elements : undefined;
    const arr = P.copyNumbers(e, 16);
    if (arr === null || P.length(arr) < 16) return false;
    for (let k = 0; k < 16; k++) out[k] = arr[k];
    return true;
  };
  const multiply = (a, b, out) => { // out = a * b (column-major)
    const r = new P.Float64Array(16);
    for (let c = 0; c < 4; c++) {
      for (let row = 0; row < 4; row++) {
        r[c * 4 + row] = a[row] * b[c * 4] + a[4 + row] * b[c * 4 + 1] + a[8 + row] * b[c * 4 + 2] + a[12 + row] * b[c * 4 + 3];
      }
    }
    for (let k = 0; k < 16; k++) out[k] = r[k];
  };
  const det3 = (e) => // the upper 3x3 decides mirroring (three's Matrix4.determinant on affine matrices)
    e[0] * (e[5] * e[10] - e[9] * e[6]) - e[4] * (e[1] * e[10] - e[9] * e[2]) + e[8] * (e[1] * e[6] - e[5] * e[2]);

  const groupFor = (material, ic) => {
    let rgb = null;
    let alpha = 1;
    if (material && typeof material === 'object') {
      const color = material.color;
      if (color && typeof color === 'object' && color.isColor === true) {
        rgb = [num(color.r), num(color.g), num(color.b)]; // linear, as glTF baseColorFactor wants
        if (ic !== null) rgb = [rgb[0] * ic[0], rgb[1] * ic[1], rgb[2] * ic[2]];
        if (!(P.isFinite(rgb[0]) && P.isFinite(rgb[1]) && P.isFinite(rgb[2]))) rgb = null;
      }
      const opacity = material.opacity;
      if (material.transparent === true && typeof opacity === 'number' && P.isFinite(opacity)) alpha = opacity;
    }
    const key = rgb === null ? `none/${alpha}` : `${rgb[0]},${rgb[1]},${rgb[2]}/${alpha}`;
    let grp = groups.get(key);
    if (!grp) {
      grp = { color: rgb, alpha, pos: new Grow(P, P.Float32Array), idx: new Grow(P, P.Uint32Array), nv: 0 };
      groups.set(key, grp);
    }
    return grp;
  };

  // The position attribute as a private copy: { arr, stride, offset, count, scale, min } or null.
  // Interleaved attributes read their InterleavedBuffer; normalized integer data is mapped like three's
  // BufferAttribute.getX does (x / max, clamped at -1 for signed types).
  const positions = (pos) => {
    const interleaved = pos.isInterleavedBufferAttribute === true;
    const data = interleaved ? pos.data : pos;
    if (!data || typeof data !== 'object') return null;
    const src = data.array;
    const itemSize = num(pos.itemSize);
    const stride = interleaved ? num(data.stride) : itemSize;
    const offset = interleaved ? num(pos.offset) : 0;
    if (!(itemSize >= 3) || !(stride >= itemSize) || !(offset >= 0) || offset + 3 > stride ||
        stride !== P.floor(stride) || offset !== P.floor(offset)) return null;
    const arr = P.copyNumbers(src, P.MAX_ELEMENTS);
    if (arr === null) return null;
    const count = P.floor(P.length(arr) / stride);
    const declared = num(pos.count);
    const n = declared >= 0 && declared < count ? P.floor(declared) : count;
    let scale = 1;
    let min = -Infinity;
    if (pos.normalized === true) {
      const t = P.tag(src);
      const m = { Int8Array: 127, Uint8Array: 255, Uint8ClampedArray: 255, Int16Array: 32767, Uint16Array: 65535, Int32Array: 2147483647, Uint32Array: 4294967295 }[t];
      if (m !== undefined) {
        scale = 1 / m;
        if (t[0] === 'I') min = -1;
      }
    }
    return { arr, stride, offset, count: n, scale, min };
  };

  const P3 = [0, 0, 0];
  const addRange = (src, index, start, end, e, flip, grp) => {
    const n = src.count;
    const arr = src.arr;
    const remap = new P.Int32Array(n).fill(-1);
    const out = grp.pos;
    const map = (v) => {
      if (!(v >= 0 && v < n) || v !== P.floor(v)) {
        badIndex++;
        return -1;
      }
      let k = remap[v];
      if (k < 0) {
        k = remap[v] = grp.nv++;
        const b = v * src.stride + src.offset;
        for (let a = 0; a < 3; a++) {
          let x = arr[b + a];
          if (src.scale !== 1) x = P.max(x * src.scale, src.min);
          P3[a] = x;
        }
        const x = P3[0], y = P3[1], z = P3[2];
        const X = e[0] * x + e[4] * y + e[8] * z + e[12];
        const Y = e[1] * x + e[5] * y + e[9] * z + e[13];
        const Z = e[2] * x + e[6] * y + e[10] * z + e[14];
        if (!P.isFinite(X) || !P.isFinite(Y) || !P.isFinite(Z)) nonFinite++;
        out.push3(X, Y, Z);
      }
      return k;
    };
    for (let t = start; t + 2 < end; t += 3) {
      const a = map(index !== null ? index[t] : t);
      const b = map(index !== null ? index[t + 1] : t + 1);
      const c = map(index !== null ? index[t + 2] : t + 2);
      if (a < 0 || b < 0 || c < 0) continue;
      if (flip) grp.idx.push3(a, c, b);
      else grp.idx.push3(a, b, c);
      if (++triangles > maxTriangles) {
        throw new P.RangeError(`more than ${maxTriangles} triangles: out of memory budget`);
      }
    }
  };

  const name = (o) => {
    const n = o.name;
    return typeof n === 'string' ? P.stringify(n.slice(0, 80)) : '""';
  };

  const addMesh = (o) => {
    const g = o.geometry;
    if (!g || typeof g !== 'object' || g.isBufferGeometry !== true) {
      skipped.push(`mesh ${name(o)} has no BufferGeometry`);
      return;
    }
    const attrs = g.attributes;
    const pos = attrs && typeof attrs === 'object' ? attrs.position : undefined;
    if (!pos || typeof pos !== 'object') return;
    const src = positions(pos);
    if (src === null) {
      badData++;
      skipped.push(`mesh ${name(o)} has an unreadable position attribute`);
      return;
    }
    if (src.count <= 0) return;
    const ix = g.index;
    let index = null;
    if (ix && typeof ix === 'object') {
      index = P.copyNumbers(ix.array, P.MAX_ELEMENTS);
      if (index === null) {
        badData++;
        skipped.push(`mesh ${name(o)} has an unreadable index`);
        return;
      }
    }
    const total = index !== null ? P.length(index) : src.count;
    const dr = g.drawRange;
    let d0 = 0;
    let d1 = total;
    if (dr && typeof dr === 'object') {
      const s = num(dr.start);
      const c = num(dr.count);
      d0 = s > 0 ? P.floor(s) : 0;
      d1 = c >= 0 ? P.min(total, d0 + c) : total;
    }
    const material = o.material;
    const multi = P.isArray(material);
    const mats = [];
    if (multi) {
      const len = num(material.length);
      for (let i = 0; i < len && i < 65536; i++) mats.push(material[i]);
    } else {
      mats.push(material);
    }
    const ranges = [];
    const gg = g.groups;
    const glen = multi && P.isArray(gg) ? num(gg.length) : 0;
    if (glen > 0) {
      for (let i = 0; i < glen && i < 65536; i++) {
        const gr = gg[i];
        if (!gr || typeof gr !== 'object') continue;
        const s = num(gr.start);
        const c = num(gr.count);
        const mi = num(gr.materialIndex);
        if (!(s >= 0) || !(c >= 0)) continue;
        ranges.push([P.max(d0, s), P.min(d1, s + c), mi >= 0 ? P.floor(mi) : 0]);
      }
    } else {
      ranges.push([d0, d1, 0]);
    }
    const instanced = o.isInstancedMesh === true;
    let instances = 1;
    let imat = null;
    let icol = null;
    if (instanced) {
      const im = o.instanceMatrix;
      imat = im && typeof im === 'object' ? P.copyNumbers(im.array, P.MAX_ELEMENTS) : null;
      if (imat === null) {
        badData++;
        skipped.push(`instanced mesh ${name(o)} has an unreadable instanceMatrix`);
        return;
      }
      const c = num(o.count);
      instances = P.max(0, P.min(c >= 0 ? P.floor(c) : 0, P.floor(P.length(imat) / 16)));
      const ic = o.instanceColor;
      if (ic && typeof ic === 'object') {
        icol = P.copyNumbers(ic.array, P.MAX_ELEMENTS);
        if (icol !== null && P.length(icol) < 3 * instances) icol = null;
      }
    }
    if (!readMatrix(o.matrixWorld, W)) {
      badData++;
      skipped.push(`mesh ${name(o)} has an unreadable matrixWorld`);
      return;
    }
    meshes++;
    const I = new P.Float64Array(16);
    for (let i = 0; i < instances; i++) {
      let ic = null;
      if (instanced) {
        for (let k = 0; k < 16; k++) I[k] = imat[16 * i + k];
        multiply(W, I, M);
        if (icol !== null) ic = [icol[3 * i], icol[3 * i + 1], icol[3 * i + 2]];
      } else {
        for (let k = 0; k < 16; k++) M[k] = W[k];
      }
      const flip = det3(M) < 0; // a mirroring transform turns faces inside out
      for (const r of ranges) {
        const mat = mats[r[2]];
        if (!mat || r[0] >= r[1]) continue; // three draws nothing without a material
        addRange(src, index, r[0], r[1], M, flip, groupFor(mat, ic));
      }
    }
  };

  const stack = [root];
  const seen = new P.Set();
  while (stack.length > 0) {
    const o = stack.pop();
    if (!o || (typeof o !== 'object' && typeof o !== 'function') || seen.has(o)) continue;
    seen.add(o);
    if (o.visible === false) continue; // three does not draw it, nor its children
    if (o.isMesh === true) addMesh(o);
    const ch = o.children;
    if (P.isArray(ch)) {
      const n = num(ch.length);
      const kids = [];
      for (let i = 0; i < n; i++) kids.push(ch[i]);
      for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
    }
  }
  if (badIndex > 0) {
    return { error_class: 'invalid_geometry', message: `${badIndex} triangle corners index past the end of their position attribute` };
  }
  if (nonFinite > 0) {
    return { error_class: 'invalid_geometry', message: `${nonFinite} vertices are NaN or infinite after applying the world transforms` };
  }
  if (triangles === 0) {
    return {
      error_class: badData > 0 ? 'invalid_geometry' : 'no_geometry',
      message: `createObject returned an Object3D with no triangles (${meshes} visible meshes)` +
        (skipped.length ? `; ${skipped.slice(0, 3).join('; ')}` : ''),
    };
  }
  const used = [];
  for (const grp of groups.values()) if (grp.idx.n > 0) used.push(grp);
  return { glb: writeGLB(P, used), triangles, meshes, skipped };
}

// A typed array that grows by doubling (JS arrays of numbers would be converted at the end).
class Grow {
  constructor(P, Type) {
    this.P = P;
    this.Type = Type;
    this.a = new Type(1024);
    this.n = 0;
  }
  push3(x, y, z) {
    if (this.n + 3 > this.a.length) {
      const b = new this.Type(this.a.length * 2);
      this.P.set(b, this.a);
      this.a = b;
    }
    this.a[this.n] = x;
    this.a[this.n + 1] = y;
    this.a[this.n + 2] = z;
    this.n += 3;
  }
  view() {
    return this.P.subarray(this.a, 0, this.n);
  }
}

// A minimal GLB 2.0 writer: one node, one mesh, one primitive (POSITION + uint32 indices) per colour;
// every accessor and bufferView is used exactly once (the Python reader insists on that).
function writeGLB(P, groups) {
  const accessors = [];
  const bufferViews = [];
  const materials = [];
  const primitives = [];
  const parts = [];
  let offset = 0;
  const addView = (typed, target) => {
    const bytes = P.bufferFrom(P.buffer(typed), P.byteOffset(typed), P.byteLength(typed));
    bufferViews.push({ buffer: 0, byteOffset: offset, byteLength: bytes.length, target });
    parts.push(bytes);
    offset += bytes.length;
    const pad = (4 - (offset % 4)) % 4;
    if (pad) {
      parts.push(P.alloc(pad));
      offset += pad;
    }
    return bufferViews.length - 1;
  };
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    const pos = g.pos.view();
    const idx = g.idx.view();
    const min = [Infinity, Infinity, Infinity];
    const max = [-Infinity, -Infinity, -Infinity];
    for (let k = 0; k < pos.length; k += 3) {
      for (let a = 0; a < 3; a++) {
        const x = pos[k + a];
        if (x < min[a]) min[a] = x;
        if (x > max[a]) max[a] = x;
      }
    }
    accessors.push({ bufferView: addView(pos, 34962), componentType: 5126, count: pos.length / 3, type: 'VEC3', min, max });
    accessors.push({ bufferView: addView(idx, 34963), componentType: 5125, count: idx.length, type: 'SCALAR' });
    const mat = { name: `material_${i}`, pbrMetallicRoughness: { metallicFactor: 0, roughnessFactor: 1 }, doubleSided: true };
    if (g.color) mat.pbrMetallicRoughness.baseColorFactor = [g.color[0], g.color[1], g.color[2], g.alpha];
    else if (g.alpha < 1) mat.pbrMetallicRoughness.baseColorFactor = [1, 1, 1, g.alpha];
    if (g.alpha < 1) mat.alphaMode = 'BLEND';
    materials.push(mat);
    primitives.push({ attributes: { POSITION: 2 * i }, indices: 2 * i + 1, material: i, mode: 4 });
  }
  const json = {
    asset: { version: '2.0', generator: 'gen3deval threejs scaffold' },
    scene: 0,
    scenes: [{ nodes: [0] }],
    nodes: [{ mesh: 0, name: 'createObject' }],
    meshes: [{ primitives }],
    materials,
    accessors,
    bufferViews,
    buffers: [{ byteLength: offset }],
  };
  let jsonBuf = P.bufferFrom(P.stringify(json), 'utf8');
  const jpad = (4 - (jsonBuf.length % 4)) % 4;
  if (jpad) jsonBuf = P.concat([jsonBuf, P.alloc(jpad, 0x20)]);
  const bin = P.concat(parts, offset);
  const head = P.alloc(12);
  head.writeUInt32LE(0x46546c67, 0); // 'glTF'
  head.writeUInt32LE(2, 4);
  head.writeUInt32LE(12 + 8 + jsonBuf.length + 8 + bin.length, 8);
  const jh = P.alloc(8);
  jh.writeUInt32LE(jsonBuf.length, 0);
  jh.writeUInt32LE(0x4e4f534a, 4); // 'JSON'
  const bh = P.alloc(8);
  bh.writeUInt32LE(bin.length, 0);
  bh.writeUInt32LE(0x004e4942, 4); // 'BIN\0'
  return P.concat([head, jh, jsonBuf, bh, bin]);
}

// ---- hardening of the host realm ------------------------------------------------------------
//
// three's objects live in this (the host) realm, so a program reaches the host's Object.prototype,
// Function.prototype, Array.prototype, %TypedArray%.prototype, iterator prototypes ... through them.
// Before any program runs (at start-up: V8 cannot deserialize a snapshot with frozen intrinsics), every
// intrinsic of this realm (the standard globals, Buffer, and the hidden ones: iterator, generator
// and async prototypes, %TypedArray%) and everything reachable from them is frozen, and so is the
// THREE namespace object (as an ES module namespace is). three's classes stay as mutable as in a
// browser: the exporter above uses none of their methods, only the captured primitives below.
// Consequence for programs: writing to a host intrinsic silently does nothing (sloppy mode) or throws
// a TypeError (strict mode); their own realm (the vm context) is theirs to change.
function gen3devalHarden(THREE) {
  const g = globalThis;
  const getProto = Object.getPrototypeOf;
  const ownKeys = Reflect.ownKeys;
  const getDesc = Reflect.getOwnPropertyDescriptor;
  const hasOwn = Object.prototype.hasOwnProperty;
  const freeze = Object.freeze;
  const names = [
    'Object', 'Function', 'Array', 'Number', 'Boolean', 'String', 'Symbol', 'BigInt', 'Date', 'Promise',
    'RegExp', 'Error', 'AggregateError', 'EvalError', 'RangeError', 'ReferenceError', 'SyntaxError',
    'TypeError', 'URIError', 'JSON', 'Math', 'Intl', 'Reflect', 'Proxy', 'ArrayBuffer', 'SharedArrayBuffer',
    'DataView', 'Atomics', 'Int8Array', 'Uint8Array', 'Uint8ClampedArray', 'Int16Array', 'Uint16Array',
    'Int32Array', 'Uint32Array', 'Float32Array', 'Float64Array', 'BigInt64Array', 'BigUint64Array',
    'Map', 'Set', 'WeakMap', 'WeakSet', 'WeakRef', 'FinalizationRegistry', 'WebAssembly', 'Iterator',
    'parseInt', 'parseFloat', 'isNaN', 'isFinite', 'decodeURI', 'decodeURIComponent', 'encodeURI',
    'encodeURIComponent', 'escape', 'unescape', 'eval', 'Buffer',
  ];
  const roots = [];
  for (const n of names) {
    const d = hasOwn.call(g, n) ? getDesc(g, n) : undefined;
    if (d && 'value' in d) roots.push(d.value);
  }
  /* eslint-disable no-empty-function */
  const gen = function* () {};
  const agen = async function* () {};
  roots.push(
    getProto(gen), getProto(gen()), getProto(agen), getProto(agen()), getProto(async () => {}),
    getProto([][Symbol.iterator]()), getProto(new Map()[Symbol.iterator]()), getProto(new Set()[Symbol.iterator]()),
    getProto(''[Symbol.iterator]()), getProto(/a/[Symbol.matchAll]('')), getProto(Uint8Array),
  );
  const skip = new Set([g, typeof process === 'object' ? process : g]);
  const seen = new Set();
  const stack = roots;
  while (stack.length > 0) {
    const o = stack.pop();
    if ((typeof o !== 'object' && typeof o !== 'function') || o === null || seen.has(o) || skip.has(o)) continue;
    seen.add(o);
    stack.push(getProto(o));
    for (const k of ownKeys(o)) {
      const d = getDesc(o, k);
      if ('value' in d) stack.push(d.value);
      else stack.push(d.get, d.set);
    }
  }
  for (const o of seen) freeze(o);
  freeze(THREE);
  return seen.size;
}

// The functions the runner and exporter use, captured once (after hardening nothing here can change,
// but capturing also keeps the exporter from looking anything up on the program's objects).
function gen3devalPrimordials() {
  const TA = Object.getPrototypeOf(Uint8Array.prototype);
  const get = (o, k) => Reflect.getOwnPropertyDescriptor(o, k).get;
  const apply = Reflect.apply;
  const taLength = get(TA, 'length');
  const taTag = get(TA, Symbol.toStringTag);
  const taBuffer = get(TA, 'buffer');
  const taByteOffset = get(TA, 'byteOffset');
  const taByteLength = get(TA, 'byteLength');
  const taSet = TA.set;
  const taSubarray = TA.subarray;
  const isArray = Array.isArray;
  const floor = Math.floor;
  const types = {
    Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array, Float32Array, Float64Array,
  };
  const MAX_ELEMENTS = 1 << 28; // 2**28 numbers: more than any attribute under the address-space limit
  // A private copy of a typed array (any realm; same element type) or of a real Array of numbers
  // (non-numbers become NaN); null for anything else (BigInt arrays, plain objects, too long).
  const copyNumbers = (x, maxLen) => {
    if (!x || typeof x !== 'object') return null;
    let tag;
    try {
      tag = apply(taTag, x, []);
    } catch (_) {
      tag = undefined;
    }
    if (tag !== undefined) {
      const T = types[tag];
      if (T === undefined) return null;
      const n = apply(taLength, x, []);
      if (n > maxLen) return null;
      const out = new T(n);
      apply(taSet, out, [x]);
      return out;
    }
    if (!isArray(x)) return null;
    const n = x.length;
    if (typeof n !== 'number' || !(n >= 0) || n > maxLen || n !== floor(n)) return null;
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const v = x[i];
      out[i] = typeof v === 'number' ? v : NaN;
    }
    return out;
  };
  const BufferFrom = Buffer.from;
  const BufferAlloc = Buffer.alloc;
  const BufferConcat = Buffer.concat;
  const stringify = JSON.stringify;
  return Object.freeze({
    Map, Set, Float64Array, Float32Array, Uint32Array, Int32Array, RangeError, MAX_ELEMENTS,
    isArray, floor, min: Math.min, max: Math.max, isFinite: Number.isFinite, copyNumbers,
    length: (t) => apply(taLength, t, []),
    tag: (t) => { try { return apply(taTag, t, []); } catch (_) { return undefined; } },
    buffer: (t) => apply(taBuffer, t, []),
    byteOffset: (t) => apply(taByteOffset, t, []),
    byteLength: (t) => apply(taByteLength, t, []),
    set: (t, src) => apply(taSet, t, [src]),
    subarray: (t, a, b) => apply(taSubarray, t, [a, b]),
    bufferFrom: (...a) => apply(BufferFrom, Buffer, a),
    alloc: (...a) => apply(BufferAlloc, Buffer, a),
    concat: (...a) => apply(BufferConcat, Buffer, a),
    stringify: (v) => apply(stringify, JSON, [v]),
  });
}

// ---- entry ----------------------------------------------------------------------------------
{
  // Hardening cannot be stored in the snapshot: V8 adds its staged features to the intrinsics when it
  // deserializes a context (Genesis::InitializeExperimentalGlobal), a fatal error on frozen objects.
  // So it runs first thing at start-up (~700 objects, a few ms), before the program is even read.
  const start = () => {
    gen3devalHarden(__gen3devalTHREE);
    gen3devalMain(__gen3devalTHREE, gen3devalPrimordials());
  };
  const v8 = require('v8');
  if (v8.startupSnapshot && v8.startupSnapshot.isBuildingSnapshot()) {
    v8.startupSnapshot.setDeserializeMainFunction(start);
  } else {
    start();
  }
}
