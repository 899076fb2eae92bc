// vidkv browser demo: replays the dispatch plan that the Rust library traced (plan.json,
// plan.bin; see src/gpu/trace.rs for the format) on this page's WebGPU device, with the WGSL
// files of shaders/ as they are, and computes every figure from what this GPU returns.

const GUARD_WORDS = 64;
const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  const status = $('status');
  status.dataset.state = state;
  status.textContent = text;
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

// The F32 tensors of a safetensors file, as byte views.
function parseSafetensors(bytes) {
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`tensor ${name} is ${info.dtype}, expected F32`);
    const [from, to] = info.data_offsets;
    tensors[name] = { shape: info.shape, bytes: bytes.slice(8 + headerLength + from, 8 + headerLength + to) };
  }
  return tensors;
}

// Replays the plan; returns the read-backs (with their step and note) and GPU time per step.
async function replay(device, plan, blob, sources) {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = plan.buffers.map((b) => device.createBuffer({ label: b.label, size: b.size, usage }));
  const shaderText = new Map();
  for (const event of plan.events) {
    if (event.op !== 'dispatch') continue;
    for (const file of event.files) {
      if (!shaderText.has(file)) shaderText.set(file, null);
    }
  }
  await Promise.all([...shaderText.keys()].map(async (file) => {
    shaderText.set(file, await (await fetchOk(`shaders/${file}`)).text());
  }));
  const pipelines = new Map();
  const pipeline = async (event) => {
    const key = `${event.kernel}::${event.entry}`;
    if (!pipelines.has(key)) {
      // The same composition as Kernel::composed_source: common, kernel file, variant.
      const [common, source, variant = ''] = event.files.map((f) => shaderText.get(f));
      const module = device.createShaderModule({ label: event.kernel, code: `${common}\n${source}\n${variant}` });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === 'error');
      if (errors.length) throw new Error(`${event.kernel}: ${errors.map((m) => m.message).join('; ')}`);
      pipelines.set(key, await device.createComputePipelineAsync({
        label: key, layout: 'auto', compute: { module, entryPoint: event.entry },
      }));
    }
    return pipelines.get(key);
  };
  const pieceBytes = (piece, reads) => {
    if ('blob' in piece) return blob.subarray(piece.blob, piece.blob + piece.len);
    const from = 'source' in piece ? sources[piece.source] : reads[piece.read];
    if (!from) throw new Error(`plan refers to missing data ${JSON.stringify(piece)}`);
    return from.subarray(piece.offset, piece.offset + piece.len);
  };

  const reads = [];
  const readInfo = [];
  const stepMs = {};
  let step = '';
  let note = null;
  let encoder = null;
  for (const event of plan.events) {
    switch (event.op) {
      case 'step':
        step = event.name;
        note = null;
        break;
      case 'note':
        note = event.note;
        break;
      case 'write': {
        let offset = event.offset;
        for (const piece of event.data) {
          const bytes = pieceBytes(piece, reads);
          device.queue.writeBuffer(buffers[event.buffer], offset, bytes);
          offset += bytes.length;
        }
        break;
      }
      case 'dispatch': {
        const p = await pipeline(event);
        const uniform = device.createBuffer({ size: event.params.length * 4, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
        device.queue.writeBuffer(uniform, 0, new Uint32Array(event.params));
        const entries = [{ binding: 0, resource: { buffer: uniform } }];
        for (const [binding, id, offset, size] of event.bindings) {
          const resource = { buffer: buffers[id], offset };
          if (size > 0) resource.size = size;
          entries.push({ binding, resource });
        }
        const group = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries });
        encoder ??= device.createCommandEncoder();
        const pass = encoder.beginComputePass({ label: event.kernel });
        pass.setPipeline(p);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(event.grid[0], event.grid[1], 1);
        pass.end();
        break;
      }
      case 'copy':
        encoder ??= device.createCommandEncoder();
        encoder.copyBufferToBuffer(buffers[event.from], event.from_offset, buffers[event.to], event.to_offset, event.size);
        break;
      case 'submit': {
        const start = performance.now();
        device.queue.submit([(encoder ?? device.createCommandEncoder()).finish()]);
        encoder = null;
        await device.queue.onSubmittedWorkDone();
        stepMs[step] = (stepMs[step] ?? 0) + performance.now() - start;
        break;
      }
      case 'read': {
        const size = event.words * 4;
        const staging = device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        const copy = device.createCommandEncoder();
        copy.copyBufferToBuffer(buffers[event.buffer], 0, staging, 0, size);
        device.queue.submit([copy.finish()]);
        await staging.mapAsync(GPUMapMode.READ);
        reads[event.read] = new Uint8Array(staging.getMappedRange().slice(0));
        staging.unmap();
        staging.destroy();
        readInfo.push({ index: event.read, label: event.label, step, note });
        break;
      }
      default:
        throw new Error(`unknown plan event ${event.op}`);
    }
  }
  return { reads, readInfo, stepMs };
}

function fnv1a(byteArrays) {
  let hash = 0x811c9dc5;
  for (const bytes of byteArrays) {
    for (const b of bytes) hash = Math.imul(hash ^ b, 0x01000193) >>> 0;
  }
  return hash >>> 0;
}

// f64 softmax attention of one query row over keys lo..hi of one head.
function exactAttention(q, k, v, base, lo, hi, d) {
  const scale = 1 / Math.sqrt(d);
  const scores = new Float64Array(hi - lo);
  let max = -Infinity;
  for (let t = lo; t < hi; t++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += q[j] * k[base + t * d + j];
    scores[t - lo] = s * scale;
    max = Math.max(max, scores[t - lo]);
  }
  const out = new Float64Array(d);
  let sum = 0;
  for (let t = lo; t < hi; t++) {
    const w = Math.exp(scores[t - lo] - max);
    sum += w;
    for (let j = 0; j < d; j++) out[j] += w * v[base + t * d + j];
  }
  return out.map((x) => x / sum);
}

function figures(plan, replayed, tensors) {
  const s = plan.sample;
  const f32 = (bytes) => new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const [k, v, q] = ['k', 'v', 'q'].map((n) => f32(tensors[n].bytes));
  const gqa = s.q_heads / s.kv_heads;
  const headLen = s.tokens * s.head_dim;
  const elements = 2 * s.layers * s.kv_heads * s.tokens * s.head_dim;
  const exact = [];
  for (let l = 0; l < s.layers; l++) {
    for (let h = 0; h < s.q_heads; h++) {
      for (let i = 0; i < s.queries; i++) {
        const at = ((l * s.q_heads + h) * s.queries + i) * s.head_dim;
        const base = (l * s.kv_heads + Math.floor(h / gqa)) * headLen;
        const [lo, hi] = s.visible[i];
        exact.push(exactAttention(q.subarray(at, at + s.head_dim), k, v, base, lo, hi, s.head_dim));
      }
    }
  }
  const results = [];
  for (const preset of plan.presets) {
    const info = replayed.readInfo.filter((r) => r.step.startsWith(`${preset}: `));
    const quantize = info.filter((r) => r.step === `${preset}: quantize`);
    const bytes = quantize.reduce((n, r) => n + replayed.reads[r.index].length - GUARD_WORDS * 4, 0);
    const checksum = fnv1a(quantize.filter((r) => plan.code_labels.includes(r.label)).map((r) => replayed.reads[r.index]));
    const outputs = info.filter((r) => r.step === `${preset}: attention` && r.label === 'attention output');
    let total = 0;
    let count = 0;
    outputs.forEach((r, layer) => {
      const out = f32(replayed.reads[r.index]);
      for (let h = 0; h < s.q_heads; h++) {
        for (let i = 0; i < s.queries; i++) {
          const at = (h * s.queries + i) * s.head_dim;
          const ref = exact[(layer * s.q_heads + h) * s.queries + i];
          let diff = 0;
          let norm = 0;
          for (let j = 0; j < s.head_dim; j++) {
            diff += (out[at + j] - ref[j]) ** 2;
            norm += ref[j] ** 2;
          }
          total += Math.sqrt(diff / norm);
          count += 1;
        }
      }
    });
    results.push({
      preset,
      bytes,
      bits: (bytes * 8) / elements,
      attention_error: total / count,
      codes_checksum: checksum,
      quantize_ms: replayed.stepMs[`${preset}: quantize`] ?? 0,
      attention_ms: replayed.stepMs[`${preset}: attention`] ?? 0,
      layers_attended: outputs.length,
    });
  }
  return results;
}

// Softmax weights [layer][row][token] from the heat-map step's per-segment scores and
// (max, sum) statistics: w = p · e^(m − M) / Σ l · e^(m − M) over the segments.
function heatMaps(plan, replayed, preset) {
  const s = plan.sample;
  const rows = s.q_heads * s.queries;
  const f32 = (bytes) => new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const step = replayed.readInfo.filter((r) => r.step === `${preset}: heat map`);
  const layers = [];
  for (let l = 0; l < s.layers; l++) {
    const segments = [];
    for (const r of step.filter((x) => x.note && x.note.layer === l)) {
      const seg = segments.find((x) => x.note === r.note) ?? segments[segments.push({ note: r.note }) - 1];
      if (r.label === 'attention scores') seg.scores = f32(replayed.reads[r.index]);
      if (r.label === 'attention stats') seg.stats = f32(replayed.reads[r.index]);
    }
    const weights = [];
    for (let row = 0; row < rows; row++) {
      const stat = (seg, sp) => [seg.stats[(row * seg.note.splits + sp) * 2], seg.stats[(row * seg.note.splits + sp) * 2 + 1]];
      let top = -Infinity;
      for (const seg of segments) {
        for (let sp = 0; sp < seg.note.splits; sp++) {
          const [m, l] = stat(seg, sp);
          if (l > 0) top = Math.max(top, m);
        }
      }
      let total = 0;
      const w = new Float64Array(s.tokens);
      for (const seg of segments) {
        const { segment_start: start, segment_len: len, splits, split_tokens: splitTokens } = seg.note;
        const stride = (len + 3) & ~3;
        for (let sp = 0; sp < splits; sp++) {
          const [m, l] = stat(seg, sp);
          if (l <= 0) continue;
          total += l * Math.exp(m - top);
          for (let t = sp * splitTokens; t < Math.min(len, (sp + 1) * splitTokens); t++) {
            w[start + t] = seg.scores[row * stride + t] * Math.exp(m - top);
          }
        }
      }
      weights.push(w.map((x) => x / total));
    }
    layers.push(weights);
  }
  return layers;
}

function drawMap(canvas, weights, plan, query) {
  const s = plan.sample;
  const gqa = s.q_heads / s.kv_heads;
  canvas.width = s.tokens;
  canvas.height = s.q_heads;
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(s.tokens, s.q_heads);
  for (let h = 0; h < s.q_heads; h++) {
    // Rows of KV head h / gqa are position-major: (query, GQA member) adjacent.
    const kv = Math.floor(h / gqa);
    const row = kv * gqa * s.queries + query * gqa + (h % gqa);
    const w = weights[row];
    const peak = Math.max(...w) || 1;
    for (let t = 0; t < s.tokens; t++) {
      // Log scale over three decades below the row's peak.
      const x = Math.max(0, 1 + Math.log10(Math.max(w[t], 1e-30) / peak) / 3);
      const o = (h * s.tokens + t) * 4;
      image.data[o] = 255 - 200 * x;
      image.data[o + 1] = 255 - 170 * x;
      image.data[o + 2] = 255 - 60 * x;
      image.data[o + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function render(plan, results, maps) {
  const largest = Math.max(...results.map((r) => r.bytes));
  $('bars').replaceChildren(...results.map((r) => {
    const row = document.createElement('div');
    row.className = 'bar-row';
    row.innerHTML = `<span class="bar-label">${r.preset}</span><span class="bar ${r.preset}" style="width:${Math.max(2, (600 * r.bytes) / largest)}px"></span><span>${r.bytes.toLocaleString('en')} B · ${r.bits.toFixed(3)} bits</span>`;
    return row;
  }));
  $('figures').tBodies[0].replaceChildren(...results.map((r) => {
    const tr = document.createElement('tr');
    tr.dataset.preset = r.preset;
    tr.innerHTML = `<td>${r.preset}</td><td>${r.bytes.toLocaleString('en')}</td><td class="bits">${r.bits.toFixed(4)}</td>`
      + `<td class="error">${r.attention_error.toFixed(6)}</td><td class="checksum">${r.codes_checksum.toString(16).padStart(8, '0')}</td>`
      + `<td>${r.quantize_ms.toFixed(1)}</td><td>${r.attention_ms.toFixed(1)}</td>`;
    return tr;
  }));
  const s = plan.sample;
  const modelLayers = plan.model_layers ?? Array.from({ length: s.layers }, (_, l) => l);
  $('layer').replaceChildren(...modelLayers.map((m, l) => new Option(`${m}`, `${l}`)));
  $('layer').value = `${Math.floor(s.layers / 2)}`;
  $('query').replaceChildren(...s.q_positions.map((p, i) => new Option(`position ${p}`, `${i}`)));
  $('query').value = `${s.queries - 1}`;
  const redraw = () => {
    const layer = Number($('layer').value);
    const query = Number($('query').value);
    drawMap($('map-fp16'), maps.fp16[layer], plan, query);
    drawMap($('map-vidkv'), maps.vidkv[layer], plan, query);
  };
  $('layer').onchange = redraw;
  $('query').onchange = redraw;
  redraw();
}

async function main() {
  if (!('gpu' in navigator)) {
    setStatus('no-webgpu', 'This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome, Edge or Firefox with WebGPU enabled; headless Chromium needs --enable-unsafe-webgpu.');
    return;
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    setStatus('no-webgpu', 'WebGPU is present but no adapter is available (blocked, or no GPU driver). In Chromium try --enable-unsafe-webgpu.');
    return;
  }
  const limits = {};
  for (const name of ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupsPerDimension', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX']) {
    limits[name] = adapter.limits[name];
  }
  const device = await adapter.requestDevice({ requiredLimits: limits });
  const gpuErrors = [];
  device.addEventListener('uncapturederror', (e) => {
    gpuErrors.push(e.error.message);
    console.error(`WebGPU error: ${e.error.message}`);
  });
  const info = adapter.info ?? {};
  const features = [...adapter.features].sort();
  const adapterName = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' / ') || 'unknown adapter';
  $('adapter').textContent = `${adapterName} — features: ${features.join(', ') || 'none'}`;

  setStatus('loading', 'Loading the plan and the sample…');
  const plan = await (await fetchOk('plan.json')).json();
  const blob = new Uint8Array(await (await fetchOk('plan.bin')).arrayBuffer());
  const tensors = parseSafetensors(new Uint8Array(await (await fetchOk(plan.sample_file)).arrayBuffer()));
  const sources = Object.fromEntries(Object.entries(tensors).map(([n, t]) => [n, t.bytes]));

  setStatus('running', `Running ${plan.events.filter((e) => e.op === 'dispatch').length} dispatches on the GPU…`);
  const replayed = await replay(device, plan, blob, sources);
  if (gpuErrors.length) throw new Error(gpuErrors.join('; '));
  const results = figures(plan, replayed, tensors);
  const maps = { fp16: heatMaps(plan, replayed, 'fp16'), vidkv: heatMaps(plan, replayed, 'vidkv') };
  render(plan, results, maps);
  window.vidkvResults = { adapter: adapterName, features, results };
  setStatus('done', `Done: ${plan.presets.join(', ')} on ${adapterName}.`);
}

main().catch((e) => {
  console.error(e);
  setStatus('error', `Failed: ${e.message}`);
});
