// A scan site's layer page: sort the unit tiles (strongest activation or channel) and filter them by channel.
(function () {
  const box = document.getElementById('tiles'), tiles = Array.from(box.children);
  const sort = document.getElementById('sort'), filter = document.getElementById('filter');
  const count = document.getElementById('count');
  function accepts(text) {  // "12, 40-60" -> channel test; null: not understood
    const ranges = [];
    for (const part of text.split(/[\s,]+/).filter(Boolean)) {
      const m = part.match(/^(\d+)(?:-(\d+))?$/);
      if (!m) return null;
      ranges.push([Number(m[1]), m[2] === undefined ? Number(m[1]) : Number(m[2])]);
    }
    return ranges.length ? (c) => ranges.some(([a, b]) => c >= a && c <= b) : () => true;
  }
  function update() {
    const byChannel = sort.value === 'channel', ch = (t) => Number(t.dataset.channel);
    const value = (t) => Number(t.dataset.value);
    tiles.sort((a, b) => byChannel ? ch(a) - ch(b) : (value(b) - value(a)) || ch(a) - ch(b));
    const test = accepts(filter.value);
    filter.classList.toggle('bad', test === null);
    let shown = 0;
    for (const t of tiles) {
      t.hidden = test !== null && !test(ch(t));
      shown += t.hidden ? 0 : 1;
      box.appendChild(t);
    }
    count.textContent = shown + ' of ' + tiles.length + ' units';
  }
  sort.addEventListener('change', update);
  filter.addEventListener('input', update);
  update();
})();
