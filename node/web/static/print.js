// Progressive enhancement: a print button on the report (the page prints without it, too).
document.querySelectorAll(".js-print").forEach((b) => b.addEventListener("click", () => window.print()));
