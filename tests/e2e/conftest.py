def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the tab in headless Chromium (TRT_SKIP_BROWSER=1 skips it)")
