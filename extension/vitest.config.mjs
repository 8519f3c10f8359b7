// The front end's unit tests: jsdom for the DOM, the sources compiled on the fly.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    // @jupyterlab packages are ES modules that import CSS-free code only; let vite transform them
    server: { deps: { inline: [/@jupyterlab\//, /@jupyter\//, /@lumino\//, /@microsoft\//] } }
  }
});
