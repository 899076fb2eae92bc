// vidkv browser demo: the library itself, compiled to wasm32 (web/wasm, scripts/build-wasm.sh),
// quantizes the bundled SmolLM2-135M sample with each preset on this page's WebGPU device,
// attends its stored queries, and measures the error against exact attention. Every figure
// is computed here by the library; nothing is replayed.
import init, { Gpu, evaluateSample } from './pkg/vidkv_web.js';

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
  const gpu = await Gpu.open();
  const results = [];
  const largest = { value: 0 };
  for (const preset of PRESETS) {
    setStatus('running', `Quantizing and attending with ${preset}…`);
    const started = performance.now();
    const figures = await evaluateSample(gpu, tensors, sidecar, preset);
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
  window.vidkvResults = { adapter: adapterName, results };
  setStatus('done', `Done: ${PRESETS.length} presets quantized and attended by the library on this GPU.`);
}

main().catch((error) => {
  console.error(error);
  setStatus('error', `Failed: ${error.message ?? error}`);
});
