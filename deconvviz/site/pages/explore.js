// An explore layer page: a click on the image picks the feature-map position whose receptive field is
// centred closest to it, draws that field and lists the units strongest there (precomputed, in #positions).
(function () {
  const P = JSON.parse(document.getElementById('positions').textContent);  // the page's JSON block
  const img = document.getElementById('picture');
  const field = document.getElementById('field'), dot = document.getElementById('dot');
  const list = document.getElementById('units'), where = document.getElementById('where');
  function nearest(v, centres) {  // the position whose receptive field is centred closest to input pixel v
    let best = 0;  // ties: the first (upper-left), as --at chooses
    for (let i = 1; i < centres.length; i++) {
      if (Math.abs(centres[i] - (v + 0.5)) < Math.abs(centres[best] - (v + 0.5))) best = i;
    }
    return best;
  }
  function show(y, x) {
    const row = nearest(y, P.centres[0]), col = nearest(x, P.centres[1]);
    const [t, b] = P.rows[row], [l, r] = P.cols[col];
    const pct = (v) => (100 * v / P.size) + '%';
    Object.assign(field.style, {top: pct(t), left: pct(l), height: pct(b - t), width: pct(r - l), display: 'block'});
    Object.assign(dot.style, {top: pct(y + 0.5), left: pct(x + 0.5), display: 'block'});
    where.dataset.row = row; where.dataset.col = col; where.dataset.y = y; where.dataset.x = x;
    where.textContent = 'Pixel (' + y + ', ' + x + ') → position (' + row + ', ' + col + ') of the ' + P.h + '×' +
      P.w + ' map; its receptive field: rows ' + t + '–' + (b - 1) + ', cols ' + l + '–' + (r - 1) + '.';
    list.replaceChildren();
    const base = (row * P.w + col) * P.k;
    for (let j = 0; j < P.k; j++) {
      const unit = P.units[base + j];
      if (unit < 0) break;
      const li = document.createElement('li'), pic = document.createElement('img');
      const text = document.createElement('span');
      li.dataset.unit = unit; li.dataset.value = P.values[base + j];
      pic.src = 'unit-' + unit + '.jpg'; pic.alt = 'unit ' + unit + ': projection'; pic.height = 56;
      const m = P.maps[String(unit)];
      text.textContent = 'unit ' + unit + ': ' + P.values[base + j] + ' here (its strongest: ' + m.value + ' at (' +
        m.row + ', ' + m.col + '))';
      li.append(pic, text);
      list.appendChild(li);
    }
    if (!list.children.length) {
      const li = document.createElement('li'); li.textContent = 'no unit is active here'; list.appendChild(li);
    }
  }
  img.addEventListener('click', function (ev) {
    const box = img.getBoundingClientRect();
    const y = Math.min(P.size - 1, Math.floor((ev.clientY - box.top) * P.size / box.height));
    const x = Math.min(P.size - 1, Math.floor((ev.clientX - box.left) * P.size / box.width));
    show(y, x);
  });
})();
