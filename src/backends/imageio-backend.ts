/** The imageio backend lives in ./imageio/; this path stays for existing imports. */
export * from './imageio/index';
