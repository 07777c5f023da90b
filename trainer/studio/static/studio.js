// covergen studio: drag-and-drop uploads and the live loss chart. No build step.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf;

  const zone = document.getElementById("dropzone");
  if (zone) {
    const input = document.getElementById("file-input");
    const result = document.getElementById("upload-result");
    const send = async (files) => {
      if (!files.length) return;
      const body = new FormData();
      for (const f of files) body.append("files", f, f.name);
      result.textContent = "上传中 uploading " + files.length + " …";
      const reply = await fetch(zone.dataset.url, {method: "POST", body, headers: {"X-CSRF-Token": csrf}});
      result.innerHTML = await reply.text();
      htmx.ajax("GET", zone.dataset.grid, {target: "#grid", swap: "innerHTML"});
    };
    input.addEventListener("change", () => send([...input.files]));
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); send([...e.dataTransfer.files]); });
  }

  const canvas = document.getElementById("loss-chart");
  if (canvas) {
    const point = ([x, y]) => ({x, y});
    const chart = new Chart(canvas, {
      type: "line",
      data: {datasets: [
        {label: "训练 train", data: [], borderColor: "#2a6fb0", pointRadius: 0, borderWidth: 1.5},
        {label: "验证 validation", data: [], borderColor: "#d0542c", pointRadius: 3, showLine: true},
      ]},
      options: {animation: false, parsing: false, responsive: false,
                scales: {x: {type: "linear", title: {display: true, text: "step"}}, y: {title: {display: true, text: "loss"}}}},
    });
    const refresh = async () => {
      const reply = await fetch(canvas.dataset.url);
      const p = await reply.json();
      chart.data.datasets[0].data = p.train.map(point);
      chart.data.datasets[1].data = p.validation.map(point);
      chart.update();
      canvas.dataset.trainPoints = p.train.length;
      canvas.dataset.validationPoints = p.validation.length;
      if (!["succeeded", "failed", "stopped", "interrupted"].includes(p.state)) setTimeout(refresh, 1000);
      else canvas.dataset.final = p.state;
    };
    refresh();
  }
})();
