"""Test rigs, not part of the library's API (`import pss_keras` loads none).

served_model    a SavedModel loaded, warmed up and run as TF Serving does
model_server    a stand-in for tensorflow_model_server (gRPC and REST)
rest_api        its REST side: routes, request and answer JSON, as TF Serving's source
synthetic_job   a job with random weights and N tiers, for benchmarks and tests
torch_writer    torch.save-format files without torch (official PSS-Net checkpoint layout)
"""
