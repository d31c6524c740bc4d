/** imageio-nbd's version, as `--version`, `--dump-config` and the built-in servers print it (package.json's "version"). */
export const VERSION = '0.1.0';
