// Drives the OHIF viewer that MONAI Label serves at /ohif/ with Debian's Chromium (headless, Playwright's
// playwright-core from work/node/, no browser download). Called by tests/test_server_dicomweb.py:
//
//   node ohif_radvlsm.cjs panel <app url> <StudyInstanceUID> <out dir> [volume]
//       opens the study in OHIF's "MONAI Label" mode, connects the MONAI Label panel to the app, runs the radvlsm
//       task from its Auto-Segmentation tab, and reports what the panel did with the answer. With "volume" (a
//       series of several slices) the mode's own hanging protocol is used (MPR: OHIF builds a volume), else the
//       default one (a single image makes no volume).
//   node ohif_radvlsm.cjs seg <app url> <StudyInstanceUID> <out dir>
//       opens the same study, loads its DICOM SEG series (the label the app stored in Orthanc) over the image.
//
// Each mode saves <mode>.png in <out dir> and prints one JSON line (last line of stdout) with what it saw.
'use strict';
const path = require('path');
const fs = require('fs');

const ROOT = path.resolve(__dirname, '..', '..');
const { chromium } = require(path.join(ROOT, 'work', 'node', 'node_modules', 'playwright-core'));

async function main() {
  const [mode, app, study, out, kind] = process.argv.slice(2);
  fs.mkdirSync(out, { recursive: true });
  const report = { mode, console: [], infer_requests: [], errors: [] };
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // WebGL through SwiftShader (CPU): cornerstone3D renders with WebGL
    args: ['--no-sandbox', '--enable-unsafe-swiftshader', '--use-angle=swiftshader', '--ignore-gpu-blocklist'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('console', (m) => {
      const t = m.text();
      if (/UpdateView|Volume Object|Running Infer|NRRD|Segmentation|segmentation/.test(t)) {
        report.console.push(`${m.type()}: ${t.slice(0, 300)}`);
      }
    });
    page.on('pageerror', (e) => report.errors.push(e.message.slice(0, 300)));
    page.on('response', (r) => {
      if (r.url().includes('/infer/')) report.infer_requests.push({ url: r.url(), status: r.status() });
    });
    // hangingprotocolid=default: the mode's own "mpr" protocol needs a volume, and OHIF builds none from one
    // single-frame image (isDisplaySetReconstructable: "Can't reconstruct if we only have one image")
    const protocol = kind === 'volume' ? '' : '&hangingprotocolid=default';
    await page.goto(`${app}/ohif/monai-label?StudyInstanceUIDs=${study}${protocol}`,
      { waitUntil: 'load', timeout: 90000 });
    await page.locator('.cornerstone-canvas, canvas').first().waitFor({ timeout: 90000 });
    const banner = page.getByText('Confirm and Hide');
    try {
      await banner.click({ timeout: 15000 });
    } catch (e) { /* no investigational-use banner */ }
    await page.waitForTimeout(3000);

    if (mode === 'panel') {
      const url = page.locator('#monailabelServerURL');
      await url.fill(`${app}/`);
      await page.locator('.monaiLabelPanel button.actionButton').first().click();
      await page.getByText('Auto-Segmentation', { exact: true }).waitFor({ timeout: 30000 });
      await page.getByText('Auto-Segmentation', { exact: true }).click();
      const tab = page.locator('.tab').filter({ hasText: 'Auto-Segmentation' });
      report.segmentation_models = await tab.locator('select option').allInnerTexts();
      report.point_prompt_models = await page.locator('.tab').filter({ hasText: 'Point Prompts' })
        .locator('select option').allInnerTexts();
      await tab.getByRole('button', { name: 'Run' }).click();
      const deadline = Date.now() + 120000;
      while (Date.now() < deadline && !report.console.some((l) => /Volume Object|updated the segmentation/.test(l))) {
        await page.waitForTimeout(500);
      }
      report.panel_drew = report.console.some((l) => /updated the segmentation's scalar data/.test(l));
    } else if (mode === 'seg') {
      await page.getByText('SEG', { exact: true }).first().dblclick();
      const yes = page.getByRole('button', { name: 'Yes' });
      await yes.waitFor({ timeout: 60000 });
      await yes.click();
      await page.waitForTimeout(8000);
    }
    report.notifications = await page.locator('[role="status"], .sb-toast, li[data-sonner-toast]').allInnerTexts();
    await page.screenshot({ path: path.join(out, `${mode}.png`) });
    // the viewport's box on the page, so the test can crop the screenshot to it
    const box = await page.locator('.cornerstone-canvas, canvas').first().boundingBox();
    report.viewport = box;
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(report));
}

main().catch((e) => {
  console.log(JSON.stringify({ fatal: String(e && e.stack || e).slice(0, 2000) }));
  process.exit(1);
});
