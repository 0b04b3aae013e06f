// Server-Sent Events over fetch (not EventSource): it can send the bearer token, and it resumes with the
// Last-Event-ID header after a drop, so a reconnect misses nothing (the API's stream is snapshot-exact).

/** An incremental parser of the text/event-stream format; feed() returns the complete events seen so far. */
export class SseParser {
  constructor() {
    this.buffer = '';
    this.reset();
    this.lastEventId = null;
    this.retry = null;
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = undefined;
  }

  feed(text) {
    this.buffer += text;
    const out = [];
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const skip = this.buffer.startsWith('\r\n', nl) ? 2 : 1;
      if (this.buffer[nl] === '\r' && nl + 1 === this.buffer.length) break; // maybe \r\n split across chunks
      this.buffer = this.buffer.slice(nl + skip);
      if (line === '') {
        if (this.id !== undefined) this.lastEventId = this.id;
        if (this.data.length) {
          out.push({ type: this.event || 'message', data: this.data.join('\n'), id: this.lastEventId });
        }
        this.reset();
        continue;
      }
      if (line.startsWith(':')) continue; // a comment (keep-alive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') this.event = value;
      else if (field === 'data') this.data.push(value);
      else if (field === 'id' && !value.includes('\u0000')) this.id = value;
      else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
    }
    return out;
  }
}

/**
 * Subscribe to `url`; calls onEvent({type, data, id}) and onState('connecting'|'open'|'retrying'|'closed', detail).
 * Returns a function that closes the stream.
 */
export function subscribe(url, { headers = {}, onEvent, onState = () => {}, fetchImpl = fetch } = {}) {
  const controller = new AbortController();
  let lastEventId = null;
  let retry = 2000;
  let closed = false;

  async function loop() {
    while (!closed) {
      onState('connecting');
      try {
        const h = { Accept: 'text/event-stream', ...headers };
        if (lastEventId) h['Last-Event-ID'] = lastEventId;
        const res = await fetchImpl(url, { headers: h, signal: controller.signal, cache: 'no-store' });
        if (!res.ok) {
          onState('retrying', `HTTP ${res.status}`);
          if (res.status === 401 || res.status === 404) { closed = true; onState('closed', `HTTP ${res.status}`); return; }
        } else {
          onState('open');
          const parser = new SseParser();
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            for (const ev of parser.feed(value)) {
              if (ev.id) lastEventId = ev.id;
              onEvent(ev);
            }
            if (parser.retry) retry = parser.retry;
          }
          onState('retrying', 'the stream ended');
        }
      } catch (err) {
        if (closed || controller.signal.aborted) break;
        onState('retrying', String(err && err.message ? err.message : err));
      }
      if (closed) break;
      await new Promise((resolve) => setTimeout(resolve, retry));
    }
    onState('closed');
  }

  loop();
  return () => {
    closed = true;
    controller.abort();
  };
}
