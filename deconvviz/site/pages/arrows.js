// The left and right arrow keys follow the page's rel=prev and rel=next links (not while typing in a field).
document.addEventListener('keydown', function (ev) {
  if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
  if (ev.target.closest && ev.target.closest('input, textarea, select')) return;
  const rel = {ArrowLeft: 'prev', ArrowRight: 'next'}[ev.key];
  const link = rel && document.querySelector('header nav a[rel="' + rel + '"]');
  if (link) { ev.preventDefault(); window.location.href = link.href; }
});
