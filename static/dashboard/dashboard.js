// Copy buttons: `data-copy="<id>"` copies that element's text. The element stays a plain,
// selectable <code>, so copying by hand works where the clipboard API is refused.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const status = button.parentElement.querySelector(".copy-status");
  const text = source.textContent.trim();
  try {
    await navigator.clipboard.writeText(text);
    if (status) status.textContent = "Copied.";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    if (status) status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
  setTimeout(() => { if (status) status.textContent = ""; }, 4000);
});
