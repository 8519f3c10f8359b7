// jsdom has no drag events; Lumino's drag-and-drop module, which the JupyterLab packages import,
// subclasses DragEvent when it loads
if (typeof globalThis.DragEvent === 'undefined') {
  (globalThis as Record<string, unknown>).DragEvent = class DragEvent extends MouseEvent {};
}

// nor matchMedia, which the web components behind @jupyterlab/apputils query when they load
if (typeof window.matchMedia !== 'function') {
  window.matchMedia = (query: string): MediaQueryList =>
    ({
      matches: false,
      media: query,
      onchange: null,
      addListener: () => undefined,
      removeListener: () => undefined,
      addEventListener: () => undefined,
      removeEventListener: () => undefined,
      dispatchEvent: () => false
    }) as MediaQueryList;
}
