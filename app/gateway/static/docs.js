// Swagger UI's initializer for /api/docs, a file of its own so the page needs no inline script
// (the Content-Security-Policy allows none).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Never send the document to validator.swagger.io: the page talks to this origin only.
    validatorUrl: null,
    // A ?url= or ?configUrl= in the address must not load someone else's document into this origin.
    queryConfigEnabled: false,
    persistAuthorization: false,
  });
});
