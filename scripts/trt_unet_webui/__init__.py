"""The extension's WebUI side: everything here may import the WebUI (`modules.*`); what does not
need the WebUI lives in trt_core/ (trt_core.hook_policy holds the hook's decisions)."""
