// The clinician page: sends the chosen file to POST predict?explain=true and shows the answer; no build step, no libraries.
"use strict";

const page = {
  info: null,
  file: null,
  imageUrl: null,
};

const element = (id) => document.getElementById(id);

function percent(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
}

function showMessage(text) {
  element("message").textContent = text;
  element("message").hidden = !text;
}

function modelLabel(model) {
  if (!model.name) {
    return model.uri;
  }
  const aliases = model.aliases.length ? ` @${model.aliases.join(" @")}` : "";
  return `${model.name} version ${model.version}${aliases}`;
}

async function loadInfo() {
  const response = await fetch("info", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`the server answered ${response.status}`);
  }
  page.info = await response.json();
  element("model").textContent = `Model: ${modelLabel(page.info.model)}`;
  element("limit").textContent = `Up to ${(page.info.max_upload_bytes / 1e6).toFixed(0)} MB.`;
  const select = element("explain-class");
  for (const name of page.info.classes) {
    select.append(new Option(name, name));
  }
  select.disabled = !page.info.explains;
}

function isBrowserImage(file) {
  return ["image/png", "image/jpeg"].includes(file.type) || /\.(png|jpe?g)$/i.test(file.name);
}

function findingRow(finding, predicted) {
  // A multi-class answer has no operating points: its prediction is the most probable class.
  const positive = finding.above_threshold === null ? predicted.includes(finding.name) : finding.above_threshold;
  const row = document.createElement("tr");
  row.className = positive ? "above" : "below";
  const name = document.createElement("td");
  name.textContent = finding.name;
  const probability = document.createElement("td");
  probability.className = "probability";
  probability.textContent = percent(finding.probability);
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = percent(finding.probability);
  const mark = document.createElement("div");
  mark.className = "mark";
  mark.style.left = percent(finding.threshold);
  mark.hidden = finding.threshold === null;
  bar.append(fill, mark);
  probability.append(bar);
  const threshold = document.createElement("td");
  threshold.className = "threshold";
  threshold.textContent = percent(finding.threshold);
  const result = document.createElement("td");
  result.className = "result";
  result.textContent = positive ? "positive" : "negative";
  if (finding.above_threshold !== null) {
    result.title = positive ? "at or above the operating point" : "below the operating point";
  }
  row.append(name, probability, threshold, result);
  return row;
}

function showImages(answer) {
  const image = element("image");
  if (isBrowserImage(page.file)) {
    image.src = page.imageUrl;
  } else if (answer.gradcam_input) {
    // Browsers cannot show DICOM: this is the decoded, windowed image the model saw, at its input size.
    image.src = `data:image/png;base64,${answer.gradcam_input}`;
  } else {
    image.removeAttribute("src");
  }
  const overlay = element("overlay");
  overlay.hidden = !answer.gradcam_overlay;
  element("opacity-control").hidden = !answer.gradcam_overlay;
  if (answer.gradcam_overlay) {
    overlay.src = `data:image/png;base64,${answer.gradcam_overlay}`;
    element("explained").textContent = `Heatmap: where the model saw evidence for ${answer.gradcam_class}.`;
  } else {
    element("explained").textContent = page.info.explains ? "" : "This model version cannot explain its answers.";
  }
}

function showAnswer(result) {
  showImages(result.answer);
  const body = element("findings").querySelector("tbody");
  body.replaceChildren(...result.findings.map((finding) => findingRow(finding, result.predicted)));
  const predicted = result.predicted.length ? result.predicted.join(", ") : "no finding at its operating point";
  element("predicted").textContent = `Predicted: ${predicted}`;
  element("file-name").textContent = `${page.file.name}, scored by ${modelLabel(result.model)}`;
  element("result").hidden = false;
}

async function score() {
  const file = page.file;
  element("result").hidden = true;
  showMessage("");
  if (file.size > page.info.max_upload_bytes) {
    const size = (file.size / 1e6).toFixed(1);
    showMessage(`${file.name} is ${size} MB, larger than the limit of ${(page.info.max_upload_bytes / 1e6).toFixed(0)} MB.`);
    return;
  }
  const query = new URLSearchParams();
  if (page.info.explains) {
    query.set("explain", "true");
    if (element("explain-class").value) {
      query.set("explain_class", element("explain-class").value);
    }
  }
  const form = new FormData();
  form.append("file", file);
  element("status").textContent = `Scoring ${file.name}…`;
  try {
    const response = await fetch(`predict?${query}`, { method: "POST", body: form, cache: "no-store" });
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (page.file !== file) {
      return;
    }
    if (!response.ok) {
      showMessage(`${file.name} cannot be scored: ${body.error}`);
    } else {
      showAnswer(body);
    }
  } catch (error) {
    showMessage(`${file.name} was not scored: ${error.message}`);
  } finally {
    if (page.file === file) {
      element("status").textContent = "";
    }
  }
}

function choose(file) {
  if (!file) {
    return;
  }
  if (page.imageUrl) {
    URL.revokeObjectURL(page.imageUrl);
  }
  page.file = file;
  page.imageUrl = URL.createObjectURL(file);
  score();
}

function setUp() {
  const zone = element("drop-zone");
  element("file").addEventListener("change", (event) => choose(event.target.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files[0]);
  });
  element("opacity").addEventListener("input", (event) => {
    element("overlay").style.opacity = event.target.value / 100;
    element("opacity-value").textContent = `${event.target.value}%`;
  });
  element("overlay").style.opacity = element("opacity").value / 100;
  element("explain-class").addEventListener("change", () => page.file && score());
  loadInfo().catch((error) => showMessage(`The model information could not be loaded: ${error.message}`));
}

document.addEventListener("DOMContentLoaded", setUp);
