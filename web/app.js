// vidkv browser demo: the library itself, compiled to wasm32 (web/wasm, scripts/build-wasm.sh),
// quantizes the bundled SmolLM2-135M sample with each preset on this page's WebGPU device,
// attends its stored queries, and measures the error against exact attention. Every figure
// is computed here by the library; nothing is replayed.
import init, { Gpu, Sample, attentionWeights, evaluateSample } from './pkg/vidkv_web.js';

const PRESETS = ['fp16', 'kivi2', 'vidkv-tuned', 'vidkv'];
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

// The page's adapter, or null when the browser offers no WebGPU adapter.
async function webgpuAdapter() {
  if (!navigator.gpu) return null;
  return navigator.gpu.requestAdapter();
}

function showRow(result, largest) {
  const row = document.createElement('tr');
  row.dataset.preset = result.preset;
  const cells = [
    ['', result.preset],
    ['bytes', result.bytes.toLocaleString('en-US')],
    ['bits', result.bits.toFixed(5)],
    ['error', result.attention_error.toFixed(7)],
    ['ms', result.ms.toFixed(1)],
  ];
  for (const [name, text] of cells) {
    const cell = document.createElement('td');
    if (name) cell.className = name;
    cell.textContent = text;
    row.append(cell);
  }
  $('figures').querySelector('tbody').append(row);
  const bar = document.createElement('div');
  bar.className = 'bar-row';
  bar.innerHTML = `<span class="bar-label">${result.preset}</span>`
    + `<span class="bar ${result.preset}" style="width:${Math.max(2, 600 * result.bytes / largest)}px"></span>`
    + `<span>${result.bytes.toLocaleString('en-US')} B</span>`;
  $('bars').append(bar);
}

// Draws `weights` ([rows][tokens]) on a canvas, one pixel per token, on a log scale from
// each row's peak down three decades.
function drawWeights(canvas, weights, rows, tokens) {
  canvas.width = tokens;
  canvas.height = rows;
  const context = canvas.getContext('2d');
  const image = context.createImageData(tokens, rows);
  for (let r = 0; r < rows; r += 1) {
    const row = weights.subarray(r * tokens, (r + 1) * tokens);
    const peak = Math.max(...row);
    for (let t = 0; t < tokens; t += 1) {
      const level = row[t] > 0 ? Math.max(0, 1 + Math.log10(row[t] / peak) / 3) : 0;
      const at = 4 * (r * tokens + t);
      image.data[at] = 255 - 200 * level;
      image.data[at + 1] = 255 - 150 * level;
      image.data[at + 2] = 255 - 60 * level;
      image.data[at + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
}

async function main() {
  const adapter = await webgpuAdapter();
  if (!adapter) {
    setStatus('no-webgpu', 'This browser offers no WebGPU adapter: vidkv needs WebGPU '
      + '(Chrome/Edge 113+, or chromium with --enable-unsafe-webgpu).');
    return;
  }
  const info = adapter.info ?? {};
  const adapterName = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'WebGPU adapter';
  $('adapter').textContent = adapterName;
  setStatus('loading', 'Loading the library (wasm) and the sample…');
  await init();
  const [tensors, sidecar] = await Promise.all([
    fetchOk('data/sample.safetensors').then((r) => r.arrayBuffer()).then((b) => new Uint8Array(b)),
    fetchOk('data/sample.json').then((r) => r.text()),
  ]);
  const sample = new Sample(tensors, sidecar);
  const gpu = await Gpu.open();
  const results = [];
  const largest = { value: 0 };
  for (const preset of PRESETS) {
    setStatus('running', `Quantizing and attending with ${preset}…`);
    const started = performance.now();
    const figures = await evaluateSample(gpu, sample, preset);
    const ms = performance.now() - started;
    results.push({
      preset,
      bytes: figures.bytes,
      bits: figures.bits_per_element,
      attention_error: figures.attention_error,
      ms,
    });
    largest.value = Math.max(largest.value, figures.bytes);
  }
  for (const result of results) showRow(result, largest.value);
  // The weights of the last stored query of the first layer, fp16 and the default.
  const { q_positions: positions, num_q_heads: heads } = JSON.parse(sidecar);
  const queries = positions.length;
  const weights = {};
  for (const preset of ['fp16', 'vidkv']) {
    weights[preset] = attentionWeights(sample, preset, 0, queries - 1);
  }
  const tokens = weights.fp16.length / heads;
  for (const preset of ['fp16', 'vidkv']) drawWeights($(`map-${preset}`), weights[preset], heads, tokens);
  window.vidkvResults = {
    adapter: adapterName,
    results,
    weights: Object.fromEntries(Object.entries(weights).map(([k, w]) => [k, Array.from(w)])),
  };
  setStatus('done', `Done: ${PRESETS.length} presets quantized and attended by the library on this GPU.`);
}

main().catch((error) => {
  console.error(error);
  setStatus('error', `Failed: ${error.message ?? error}`);
});
